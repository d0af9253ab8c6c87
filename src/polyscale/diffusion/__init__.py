"""polyscale.diffusion"""
