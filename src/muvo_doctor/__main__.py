import sys

from muvo_doctor.cli import main

sys.exit(main())
