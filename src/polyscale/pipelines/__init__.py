"""polyscale.pipelines"""
