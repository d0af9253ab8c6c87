"""Datasets that build offline (procedural or shipped in a package) and loaders for the user's files.

Tables: :data:`DATASETS` (grid ``data.kind`` -> builder), :data:`CLASSIFICATION_DATASETS` (sparse-growth
datasets); graph families are :data:`polyscale.data.graphs.GRAPH_FAMILIES`.
"""

from polyscale.data.arrays import array_file
from polyscale.data.base import GridDataset, split_indices
from polyscale.data.classification import CLASSIFICATION_DATASETS
from polyscale.data.crops import RandomCrops, crop_seed
from polyscale.data.digits import digits
from polyscale.data.images import IMAGE_EXTENSIONS, image_folder
from polyscale.data.mnist1d import mnist1d
from polyscale.data.porous import gaussian_random_field, porous_media
from polyscale.data.registry import DATASETS, DataKind
from polyscale.data.texture import TEXTURES, texture
from polyscale.metrics.porous import correlation_length, porosity, two_point_correlation

__all__ = [
    "CLASSIFICATION_DATASETS",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "TEXTURES",
    "DataKind",
    "GridDataset",
    "RandomCrops",
    "array_file",
    "correlation_length",
    "crop_seed",
    "digits",
    "gaussian_random_field",
    "image_folder",
    "mnist1d",
    "porosity",
    "porous_media",
    "split_indices",
    "texture",
    "two_point_correlation",
]
