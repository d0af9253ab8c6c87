"""polyscale.training"""
