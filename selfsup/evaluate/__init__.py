"""Honest evaluation of an encoder: features, linear probe, weighted kNN, few-shot episodes, retrieval,
few-label fine-tuning, embeddings, pictures.

Everything here takes an encoder and tensors (never a checkpoint path or a config)::

    train_x = extract_features(encoder, train_images)
    test_x = extract_features(encoder, test_images)
    linear_probe(train_x, train_y, test_x, test_y).accuracy
    knn_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    fewshot_accuracy(test_x, test_y, n_way=5, k_shot=1)             # ProtoNet episodes: mean, ci95
    recall_at_k(test_x, test_y, test_x, test_y, exclude_self=True)  # {1: ..., 5: ..., 10: ...}
    few_label_finetune(encoder, make_scratch, train_images, train_y, test_images, test_y)  # 1%, 10%

The report is the one exception: it reads a finished run's folder. ``write_report(run_dir)``
writes the run's HTML page and ``results_table(run_dirs)`` the README's results table.
"""

from selfsup.evaluate.features import extract_features, save_embeddings
from selfsup.evaluate.fewshot import Episodes, FewShotResult, fewshot_accuracy, sample_episodes
from selfsup.evaluate.finetune import FinetuneResult, few_label_finetune, finetune, label_subset
from selfsup.evaluate.knn import knn_accuracy, knn_predict
from selfsup.evaluate.plots import plot_curves, plot_embedding, plot_views
from selfsup.evaluate.probe import ProbeResult, linear_probe
from selfsup.evaluate.report import load_run, results_table, write_report
from selfsup.evaluate.retrieval import nearest_neighbours, plot_retrieval, recall_at_k

__all__ = ["ProbeResult", "extract_features", "knn_accuracy", "knn_predict", "linear_probe",
           "plot_curves", "plot_embedding", "plot_views", "save_embeddings",
           "load_run", "results_table", "write_report",
           "Episodes", "FewShotResult", "FinetuneResult", "few_label_finetune", "fewshot_accuracy", "finetune",
           "label_subset", "nearest_neighbours", "plot_retrieval", "recall_at_k", "sample_episodes"]
