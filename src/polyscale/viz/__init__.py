"""polyscale.viz"""
