"""polyscale.cli"""
