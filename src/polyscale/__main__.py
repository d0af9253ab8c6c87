import sys

from polyscale.cli.main import main

sys.exit(main())
