"""The project's least-squares fitting core, shared by ``scripts/calibrate.py`` (the catalog calibration)
and ``optimize calibrate`` (step parameters refitted to serving benchmarks).

Every fit minimises squared log errors (relative error, symmetric in over- and under-estimates) with
``scipy.optimize.least_squares`` (trust-region reflective with bounds; docs.scipy.org,
``scipy.optimize.least_squares``). scipy is an optional dependency (``pip install -e .[calibrate]``):
it is imported when a fit runs, and its absence is reported as an ``OptimizerError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from optimizer.errors import OptimizerError


def least_squares_fit(residuals: Callable[[np.ndarray], np.ndarray], x0: Any, *, lower: Any = None, upper: Any = None,
                      diff_step: float | None = None, loss: str = "linear", f_scale: float = 1.0) -> Any:
    """``scipy.optimize.least_squares`` on ``residuals`` from ``x0`` within ``[lower, upper]`` (``None``:
    unbounded), Jacobian-scaled, at most 2,000 evaluations. Returns scipy's ``OptimizeResult`` (``.x``).
    ``diff_step``: the finite-difference step relative to ``max(1, |x|)`` (scipy's default, about 1e-8,
    when None); residuals built from times rounded to nanoseconds need a coarser one (1e-2 in log space).
    ``loss`` / ``f_scale``: scipy's robust loss and its scale (``"linear"``: plain squared errors;
    ``"soft_l1"`` with ``f_scale`` 0.2 on log errors: squared below about 20%, linear above).

    Raises:
        OptimizerError: scipy is not installed.
    """
    try:
        from scipy.optimize import least_squares
    except ImportError:  # pragma: no cover - the test extra installs scipy
        raise OptimizerError("fitting needs scipy: pip install -e \".[calibrate]\"") from None
    bounds = (-np.inf if lower is None else lower, np.inf if upper is None else upper)
    extra = {} if diff_step is None else {"diff_step": diff_step}
    return least_squares(residuals, np.asarray(x0, dtype=float), bounds=bounds, x_scale="jac", max_nfev=2000, loss=loss,
                         f_scale=f_scale, **extra)


def log_error(predicted: Any, measured: Any) -> np.ndarray:
    """``log(predicted) - log(measured)`` elementwise (predictions floored at 1e-12 so a zero stays finite)."""
    return np.log(np.maximum(predicted, 1e-12)) - np.log(measured)
