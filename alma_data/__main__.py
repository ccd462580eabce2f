import sys

from alma_data.cli import main

sys.exit(main())
