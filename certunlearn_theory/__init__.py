"""certunlearn_theory: the accountant of certified unlearning by noisy fine-tuning.

Pure Python on top of mpmath (no torch): importing it is fast and works on any machine.
Every public function that returns a guarantee rounds it on the safe side; each docstring says
which side that is. The mathematical specification is in docs/ and in the module docstrings.
"""
from ._numerics import DEFAULT_DIGITS, precision, working_digits
from .amplification import *  # noqa: F401,F403
from .calibration import *  # noqa: F401,F403
from .certificate import *  # noqa: F401,F403
from .closed_forms import *  # noqa: F401,F403
from .divergences import *  # noqa: F401,F403
from .dpsgd import *  # noqa: F401,F403
from .errors import InvalidParameterError, PrecisionError, UnreachableTargetError
from .float32 import *  # noqa: F401,F403
from .formatting import format_down, format_up
from .model_clipping import *  # noqa: F401,F403
from .renyi import *  # noqa: F401,F403
from .version import __version__

