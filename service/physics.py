"""Lithiation physics from projected areas: volume, lithium content, rates, diffusion.

Pure functions on arrays (no state, no I/O), used per particle and per cluster by
:class:`lithoscope.service.analysis.SessionAnalyzer`. Every relation, its
assumptions and its sources are in docs/analysis.md.

* ``V/V0 = (A/A0)^(3/2)``: a particle that swells isotropically keeps its shape,
  so its volume scales as its projected area to the power 3/2.
* ``x = (V/V0 - 1) / 0.747`` in Li\\ :sub:`x`\\ Si: the volume of Li-Si alloys
  grows nearly linearly with the lithium content, to +280 % at Li15Si4
  (x = 3.75); 2.8 / 3.75 = 0.747 per Li per Si (Obrovac and Krause 2007; Chevrier
  and Dahn 2009).
* Rates: the Theil-Sen slope (median of pairwise slopes) of area against time over
  a short window: robust to the odd mis-segmented frame.
* Apparent diffusion coefficient: the swelling of a particle fed at its surface is
  read as diffusion into a sphere, whose slowest mode makes the approach to the
  final volume exponential with time constant ``tau = r0^2 / (pi^2 D)`` (Crank
  1975, eq. 6.20). ``tau`` comes from a Kezdy-Swinbourne fit, which needs neither the
  start time nor the final value: for ``y(t) = a + b exp(-t / tau)``,
  ``y(t + lag) = a (1 - e) + e y(t)`` with ``e = exp(-lag / tau)``, a straight line.

References
----------
M. N. Obrovac and L. J. Krause, "Reversible cycling of crystalline silicon
powder", J. Electrochem. Soc. 154 (2007) A103-A108.
V. L. Chevrier and J. R. Dahn, "First principles model of amorphous silicon
lithiation", J. Electrochem. Soc. 156 (2009) A454-A458.
J. Crank, *The Mathematics of Diffusion*, 2nd ed., Oxford (1975), section 6.3.
F. J. Kezdy, J. Jaz and A. Bruylants, Bull. Soc. Chim. Belg. 67 (1958) 687;
E. S. Swinbourne, J. Chem. Soc. (1960) 2371 (first-order kinetics without the
end point).
H. Theil, Proc. K. Ned. Akad. Wet. A 53 (1950) 386-392; P. K. Sen, J. Am. Stat.
Assoc. 63 (1968) 1379-1389 (robust slope).
X. H. Liu et al., "Size-dependent fracture of silicon nanoparticles during
lithiation", ACS Nano 6 (2012) 1522-1531 (in situ TEM of Si nanoparticles).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "LI15SI4_VOLUME_EXPANSION",
    "LI15SI4_X",
    "VOLUME_EXPANSION_PER_X",
    "diffusion_coefficient_cm2_per_s",
    "lithium_content_x",
    "relaxation_time_s",
    "theil_sen_slope",
    "theil_sen_slopes",
    "volume_ratio",
]

LI15SI4_X = 3.75
"""Lithium per silicon in Li15Si4, the fully lithiated phase at room temperature."""
LI15SI4_VOLUME_EXPANSION = 2.80
"""Relative volume increase of Si at Li15Si4 (+280 %)."""
VOLUME_EXPANSION_PER_X = LI15SI4_VOLUME_EXPANSION / LI15SI4_X
"""Relative volume increase per Li per Si, taking the volume linear in x."""

_NM_TO_CM = 1e-7


def volume_ratio(area_ratio: np.ndarray | float) -> np.ndarray:
    """``V/V0 = (A/A0)^(3/2)`` for isotropic swelling; NaN where ``A/A0`` is not positive."""
    ratio = np.asarray(area_ratio, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(ratio > 0, np.abs(ratio) ** 1.5, np.nan)


def lithium_content_x(volume: np.ndarray | float) -> np.ndarray:
    """x in Li_xSi from ``V/V0``, volume linear in x (+280 % at x = 3.75).

    Not clipped: noise around ``V/V0 = 1`` gives small negative x, and clipping would
    bias every average taken from the values.
    """
    return (np.asarray(volume, dtype=np.float64) - 1.0) / VOLUME_EXPANSION_PER_X


THEIL_SEN_POINTS = 64
"""Most points :func:`theil_sen_slope` pairs up; a longer series is first reduced to
this many consecutive groups, each by its median time and median value."""


def theil_sen_slope(t_s: np.ndarray, values: np.ndarray) -> float:
    """Median of the pairwise slopes; NaN with fewer than 3 points or no time spread.

    The pairs grow with the square of the points: a rate window at a camera's 100
    frames/s holds hundreds of samples per particle, every frame. Past
    ``THEIL_SEN_POINTS`` the series is cut into that many runs of consecutive points
    and each run stands in as its median time and median value, which keeps the
    estimate robust (an outlier moves no run median far) at a bounded cost; up to
    it, every pair is used.
    """
    t = np.asarray(t_s, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < 3:
        return math.nan
    return float(_median_slopes(t, y[np.newaxis])[0])


def theil_sen_slopes(series: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """:func:`theil_sen_slope` of each ``(t_s, values)`` pair, value for value.

    A session takes the rate of every tracked particle on every frame, and the
    particles seen on the same frames share their sample times: those series are
    stacked and their slopes taken in one set of array operations (a per-series call
    cost 0.1 ms of interpreter time each, more than its arithmetic, at 40
    particles). Series with a non-finite value or fewer than 3 points go through
    :func:`theil_sen_slope` one by one.
    """
    out = np.full(len(series), np.nan)
    groups: dict[bytes, tuple[np.ndarray, list[int], list[np.ndarray]]] = {}
    for k, (t_s, values) in enumerate(series):
        t = np.asarray(t_s, dtype=np.float64)
        y = np.asarray(values, dtype=np.float64)
        if t.shape != y.shape or t.ndim != 1 or t.size < 3 or not (
                np.isfinite(t).all() and np.isfinite(y).all()):
            out[k] = theil_sen_slope(t, y)
            continue
        _, members, rows = groups.setdefault(t.tobytes(), (t, [], []))
        members.append(k)
        rows.append(y)
    for t, members, rows in groups.values():
        out[members] = _median_slopes(t, np.stack(rows))
    return out


def _median_slopes(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The Theil-Sen slope of each row of ``y`` (k, n) against the times ``t`` (n,), all
    finite, n >= 3: past ``THEIL_SEN_POINTS`` over run medians; NaN without time spread.

    The differences of the pairs ``i < j`` are gathered by index arrays for a few rows;
    for many, lag by lag (``j - i`` = 1, 2, ...), each lag one subtraction of two
    slices: at 40 rows of 64 points the gather cost three times more. A median does
    not depend on the order of its values.
    """
    if t.size > THEIL_SEN_POINTS:
        order = np.argsort(t, kind="stable")
        t, y = _run_medians(t[order]), _run_medians(y[:, order])
    n = t.size
    if len(y) < _LAG_ROWS:
        i, j = _pairs(n)
        dy = np.take(y, j, axis=1) - np.take(y, i, axis=1)
        dt = t[j] - t[i]
    else:
        dy = np.empty((len(y), n * (n - 1) // 2))
        dt = np.empty(dy.shape[1])
        start = 0
        for lag in range(1, n):
            stop = start + n - lag
            np.subtract(y[:, lag:], y[:, :-lag], out=dy[:, start:stop])
            np.subtract(t[lag:], t[:-lag], out=dt[start:stop])
            start = stop
    ok = dt > 0
    if not ok.all():
        if not ok.any():
            return np.full(len(y), math.nan)
        dy, dt = dy[:, ok], dt[ok]
    dy /= dt
    return _median(dy)


_LAG_ROWS = 16
"""From this many rows on, :func:`_median_slopes` takes the pairs lag by lag."""


@functools.lru_cache(maxsize=16)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, k=1)``, kept: past ``THEIL_SEN_POINTS`` every series has
    that many points, and below it a session's windows grow through the same few sizes."""
    i, j = np.triu_indices(n, k=1)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def _median(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=-1)``, value for value, NaN included.

    One partition at the middle (the lower middle of an even count is the largest
    value below it) and a NaN test, without ``np.median``'s generic bookkeeping (it
    partitions at the last element as well, to find NaNs), which cost more than the
    arithmetic on the short rows of a session's slopes and run medians. The two
    middle values are averaged as ``np.mean`` does, ``(a + b) / 2``, a zero given as +0.0.
    """
    n = values.shape[-1]
    half = n // 2
    part = np.partition(values, half, axis=-1)
    middle: np.ndarray = part[..., half]
    if n % 2 == 0:
        middle = (part[..., :half].max(axis=-1) + middle) / 2
    # np.mean sums from 0.0: a zero median is +0.0 whatever the zeros' signs.
    middle = middle + 0.0
    nan = np.isnan(part).any(axis=-1)
    if nan.any():
        middle[nan] = math.nan
    return middle


def _run_medians(values: np.ndarray) -> np.ndarray:
    """Medians of ``THEIL_SEN_POINTS`` runs of consecutive values along the last axis,
    as ``np.array_split`` cuts them (the first ``n % runs`` one longer)."""
    runs = THEIL_SEN_POINTS
    *lead, n = values.shape
    size, longer = divmod(n, runs)
    split = longer * (size + 1)
    tail = _median(values[..., split:].reshape(*lead, runs - longer, size))
    if not longer:
        return tail
    head = _median(values[..., :split].reshape(*lead, longer, size + 1))
    return np.concatenate([head, tail], axis=-1)


def relaxation_time_s(t_s: np.ndarray, values: np.ndarray, *, lag_s: float) -> float:
    """Time constant of an exponential approach, by the Kezdy-Swinbourne method.

    The series is resampled on a regular grid (linear interpolation), each value is
    paired with the one ``lag_s`` later, and the slope ``e`` of the straight-line fit
    gives ``tau = -lag / ln(e)``. NaN if the series is too short (under three lags),
    the fit does not show an approach (``e`` not in (0, 1)), or it is flat.
    """
    t = np.asarray(t_s, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < 6 or not lag_s > 0 or t[-1] - t[0] < 3 * lag_s:
        return math.nan
    step = max(float(np.median(np.diff(t))), 1e-9)
    grid = np.arange(t[0], t[-1] + step / 2, step)
    resampled = np.interp(grid, t, y)
    shift = max(1, round(lag_s / step))
    if resampled.size <= shift + 3:
        return math.nan
    early, late = resampled[:-shift], resampled[shift:]
    spread = early - early.mean()
    denominator = float(spread @ spread)
    if denominator <= 0:
        return math.nan
    e = float(spread @ (late - late.mean())) / denominator
    if not 0.0 < e < 1.0:
        return math.nan
    return -shift * step / math.log(e)


def diffusion_coefficient_cm2_per_s(tau_s: float, radius_nm: float) -> float:
    """``D = r0^2 / (pi^2 tau)``: the slowest mode of diffusion into a sphere, in cm^2/s."""
    if not (math.isfinite(tau_s) and tau_s > 0 and math.isfinite(radius_nm) and radius_nm > 0):
        return math.nan
    radius_cm = radius_nm * _NM_TO_CM
    return radius_cm * radius_cm / (math.pi**2 * tau_s)
