"""Honest evaluation of an encoder: features, linear probe, weighted kNN, few-shot episodes, retrieval,
few-label fine-tuning, embeddings, pictures.

Everything here takes an encoder and tensors (never a checkpoint path or a config)::

    train_x = extract_features(encoder, train_images)
    test_x = extract_features(encoder, test_images)
    linear_probe(train_x, train_y, test_x, test_y).accuracy
    knn_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    fewshot_accuracy(test_x, test_y, n_way=5, k_shot=1)             # ProtoNet episodes: mean, ci95
    recall_at_k(test_x, test_y, test_x, test_y, exclude_self=True)  # {1: ..., 5: ..., 10: ...}
    zero_shot_accuracy(image_emb, test_y, class_weights)             # CLIP: nearest prompt embedding
    few_label_finetune(encoder, make_scratch, train_images, train_y, test_images, test_y)  # 1%, 10%

``frozen_evaluations`` and ``finetune_entry`` make these as the JSON entries of a run's
``results.json``, each with its protocol in words. The report and the tables are the exception to
"tensors only": they read finished runs' folders. ``write_report(run_dir)`` writes the run's HTML page
(``selfsup.evaluate.report``) and ``results_table(run_dirs)`` the README's results table
(``selfsup.evaluate.tables``).
"""

from selfsup.evaluate.features import TABLE_FORMATS, extract_features, save_embedding_table, save_embeddings
from selfsup.evaluate.fewshot import Episodes, FewShotResult, fewshot_accuracy, sample_episodes
from selfsup.evaluate.finetune import FinetuneResult, few_label_finetune, finetune, label_subset
from selfsup.evaluate.knn import KNN_PROTOCOL, knn_accuracy, knn_predict
from selfsup.evaluate.plots import plot_curves, plot_embedding, plot_signal_views, plot_views
from selfsup.evaluate.probe import LINEAR_PROTOCOL, ProbeResult, linear_probe
from selfsup.evaluate.report import load_run, write_report
from selfsup.evaluate.retrieval import nearest_neighbours, plot_retrieval, recall_at_k
from selfsup.evaluate.tables import headline_table, results_table
from selfsup.evaluate.zeroshot import (TEXT_RETRIEVAL_PROTOCOL, ZERO_SHOT_PROTOCOL, text_retrieval_entry,
                                       text_retrieval_recall, zero_shot_accuracy, zero_shot_entry, zero_shot_predict)
from selfsup.evaluate.suite import (COLLAPSE_PROTOCOL, FEWSHOT_PROTOCOL, FINETUNE_PROTOCOL, RETRIEVAL_PROTOCOL,
                                    collapse_entry, fewshot_entry, finetune_entry, frozen_evaluations, retrieval_picture)

__all__ = ["headline_table", "COLLAPSE_PROTOCOL", "collapse_entry", "FEWSHOT_PROTOCOL", "FINETUNE_PROTOCOL", "KNN_PROTOCOL", "LINEAR_PROTOCOL", "RETRIEVAL_PROTOCOL",
           "Episodes", "FewShotResult", "FinetuneResult", "ProbeResult", "extract_features", "few_label_finetune",
           "fewshot_accuracy", "fewshot_entry", "finetune", "finetune_entry", "frozen_evaluations", "knn_accuracy",
           "knn_predict", "label_subset", "linear_probe", "load_run", "nearest_neighbours", "plot_curves",
           "plot_embedding", "plot_retrieval", "plot_signal_views", "plot_views", "recall_at_k", "results_table", "retrieval_picture",
           "sample_episodes", "save_embedding_table", "save_embeddings", "TABLE_FORMATS", "write_report", "TEXT_RETRIEVAL_PROTOCOL", "ZERO_SHOT_PROTOCOL",
           "text_retrieval_entry", "text_retrieval_recall", "zero_shot_accuracy", "zero_shot_entry",
           "zero_shot_predict"]
