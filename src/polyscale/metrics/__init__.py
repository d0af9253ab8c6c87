"""polyscale.metrics"""
