# %% [markdown]
# # Comparing two methods with a sweep
#
# One run says little: the same recipe with another seed moves by a point or two. `selfsup sweep` runs
# a grid of settings x seeds as ordinary runs (each resumable), and summarises every point with its mean,
# standard deviation and 95% interval beside the floor, and the claim's verdict. Here: SimCLR against
# MoCo v2 on scikit-learn's digits, two seeds each, a minute of CPU in all.

# %%
from pathlib import Path

study = """
name: simclr_vs_moco
claim: "On digits at this tiny budget, SimCLR's kNN accuracy is above MoCo v2's."
overrides: [data.name=digits, data.size=16, backbone.width=8, train.batch_size=128, train.epochs=2,
            train.knn_every=0, eval.plots=false, eval.save_embeddings=false]
points:
  - {name: simclr, overrides: [method=simclr, method_args.proj_hidden_dim=64]}
  - {name: moco_v2, overrides: [method=moco, method_args.queue_size=1024, optim.lr=0.06,
                                method_args.temperature=0.1]}
seeds: 2
metrics: [knn, linear]
verdict: {better: simclr, than: [moco_v2]}
out: runs/sweeps
"""
Path("simclr_vs_moco.yaml").write_text(study)

# %%
from selfsup.cli import main

main(["sweep", "simclr_vs_moco.yaml", "--page", "simclr_vs_moco.md"])

# %% [markdown]
# Whichever way the verdict goes, read it beside the floor column: at two epochs on 1,400 digits both
# methods' kNN sits near the random-initialisation floor, so this budget cannot rank them, and the
# intervals say how far apart two seeds land. That is what a sweep is for: a claim is tested with its
# spread and its floor, not by one lucky run.
#
# The page the sweep wrote (here beside the study; the project's studies write theirs into `docs/`),
# with a plot per metric in `img/`:

# %%
print(Path("simclr_vs_moco.md").read_text().split("Reproduce:")[0])

# %% [markdown]
# Run the same command again and nothing is trained again: every run is done. Kill it half-way and it
# resumes the run it was in exactly. `--jobs 2` runs two at a time; `--executor slurm` submits each run
# as a job through submitit.
