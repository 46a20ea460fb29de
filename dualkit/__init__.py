"""dualkit: one neutral core, two native deep-learning backends (PyTorch and TensorFlow/Keras 3).

The installed distribution is this one package: ``dualkit.core``, ``dualkit.backends``, ``dualkit.tasks``,
``dualkit.benchmarks`` and the command line, ``dualkit.cli``. In the repository those subpackages are the
top-level folders ``core/``, ``backends/``, ``tasks/`` and ``benchmarks/`` (setup.cfg's ``package_dir``).
"""

from pathlib import Path

__version__ = "0.1.0"

# A source checkout that is not installed (``python -m dualkit`` from the repository): the subpackages are
# the checkout's top-level folders. An installed copy (wheel or editable) finds them through its own
# mapping, and then this adds nothing.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "setup.cfg").is_file() and (_checkout / "core" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's __path__)
