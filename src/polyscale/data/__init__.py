"""Datasets that build offline (procedural or shipped in a package) and loaders for the user's files."""

from polyscale.data.base import GridDataset, split_indices
from polyscale.data.crops import RandomCrops
from polyscale.data.digits import digits
from polyscale.data.files import array_file, image_folder
from polyscale.data.mnist1d import mnist1d
from polyscale.data.porous import gaussian_random_field, porous_media
from polyscale.metrics.porous import porosity, two_point_correlation

__all__ = ["GridDataset", "RandomCrops", "array_file", "digits", "gaussian_random_field", "image_folder",
           "mnist1d", "porosity", "porous_media", "split_indices", "two_point_correlation"]
