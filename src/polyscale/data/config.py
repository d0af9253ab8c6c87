"""The ``data`` section of an experiment: which grid dataset to build and how (see :data:`polyscale.data.DATASETS`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Which dataset to build and how (see :func:`polyscale.pipelines.datasets.build_dataset`)."""

    kind: str = (
        "digits"  # a name in polyscale.data.DATASETS: digits, mnist1d, porous, texture, image_folder, array
    )
    size: int = 16  # digits: resize target; porous: edge length of each sample; image_folder: resize target
    dims: int = 3  # porous media only: 2 or 3 spatial dimensions
    num_samples: int | None = None  # mnist1d / porous: samples to generate; texture: crops per epoch
    image: str = "gravel"  # texture: which skimage.data photograph (brick, grass, gravel)
    downsample: int = 2  # texture: shrink factor of the photograph before cropping
    porosity: float = 0.3  # porous media: target pore fraction
    # porous media, class-conditional: one class per pore fraction listed (labels 0, 1, ... in this order),
    # num_samples split evenly among them; each volume has exactly its class's porosity. () = one unlabelled
    # process at `porosity`
    porosity_classes: tuple[float, ...] = ()
    correlation_length: float = 4.0  # porous media: Gaussian-filter width of the random field, in voxels
    # porous media: True = fixed threshold on a stationary field (the same process at every size, porosity
    # fluctuates per sample); False = each sample thresholded at its own quantile (exact porosity)
    stationary: bool = False
    path: str | None = None  # image_folder / array: the user's files
    channels: int = 1  # image_folder: 1 (grey) or 3 (RGB)
    crop_size: int | None = None  # train on random crops of this edge length (train small, sample large)
    seed: int = 0  # procedural datasets and train/test split
    # labelled data: also describe each item's class in words (polyscale.data.captions), for a
    # text-conditioned model (model.text_encoder or model.context_dim)
    captions: bool = False
    # with captions: a local directory holding a CLIP text model and its tokenizer that turns them into the
    # context (model.context_dim = its hidden size); None = the model's built-in text encoder
    text_encoder: str | None = None

    def __post_init__(self) -> None:
        from polyscale.data.registry import DATASETS  # the table imports this module for its types

        DATASETS.lookup(self.kind)
        self.porosity_classes = tuple(float(p) for p in self.porosity_classes)
        if any(not 0 < p < 1 for p in self.porosity_classes):
            raise ValueError(
                f"data.porosity_classes must all lie in (0, 1), got {list(self.porosity_classes)}"
            )
