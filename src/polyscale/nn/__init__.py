"""polyscale.nn"""
