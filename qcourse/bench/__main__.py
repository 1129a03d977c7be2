import sys

from qcourse.bench import main

sys.exit(main())
