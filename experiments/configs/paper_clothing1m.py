"""Paper scale, Clothing1M (real label noise): ResNet50 and ViT-B/16 on a GPU.

Command (one GPU; DATA/train/<class>/*.jpg and DATA/test/<class>/*.jpg):

    python -m experiments.run experiments/configs/paper_clothing1m.py --data-root DATA --workdir runs/paper_clothing1m

Reproduces the Clothing1M rows of the paper (ResNet50 67.48 → 69.64, ViT-B/16
69.12 → 71.43) with the image-folder loader: the 14 classes as sub-folders of
train/ (the noisy labels) and test/ (the clean test set). The labels are noisy
by nature, so the noise spec is "none": there are no clean training labels,
hence no Retrain and no oracle α; SAP's α and the baselines' settings are
chosen on a 10 % split of the noisy training set. Training follows the
published Clothing1M template (SGD lr 1e-2, weight decay 4e-5, 10 epochs).

Caveats: the published runs start from ImageNet-pretrained weights, which this
runner does not load (it trains from scratch), and the folder loader holds all
images in memory (≈ 0.6 MB per 224×224 image), so use a class-balanced subset
of the 1M noisy images (e.g. 64k) or lower image_size with
``--set setup.data_options.image_size=112``.
"""

from experiments.config import Config, MethodSpec, Setup, TableSpec
from experiments.configs.paper_cifar10 import PAPER_ALPHAS

DATA = {"image_size": 224, "dataset_name": "clothing1m"}


def get_config() -> Config:
  return Config(
    name="paper_clothing1m",
    description="Clothing1M (real label noise) at the paper's settings",
    version=1,
    setups=(
      Setup(
        dataset="folder",
        model="resnet50",
        model_kwargs={"stem": "imagenet"},
        data_options=DATA,
        label="ResNet50",
      ),
      Setup(dataset="folder", model="vit_b16", data_options=DATA, label="ViT-B/16"),
    ),
    noises=("none",),
    train={
      "epochs": 10,
      "batch_size": 256,
      "learning_rate": 1e-2,
      "momentum": 0.9,
      "weight_decay": 4e-5,
      "schedule": "cosine",
      "eval_every": 1,
    },
    methods=(
      MethodSpec("vanilla"),
      MethodSpec("finetune", {"n_retain": 5000}),
      MethodSpec("ssd", {"n_retain": 5000, "n_forget": 1000}),
      MethodSpec("scrub", {"n_retain": 1000, "n_forget": 200}),
      MethodSpec("sap", {"n_trusted": 1000, "alphas": PAPER_ALPHAS}),
    ),
    table=TableSpec(rows=("method",), columns=("setup",), reference_rows=(), oracle_rows=False),
    oracle=False,
    plots=("alpha_curve",),
  )
