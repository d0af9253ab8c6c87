"""polyscale.data"""
