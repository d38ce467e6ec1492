"""The resend timeout of a device, computed like TCP's (RFC 6298).

V. Paxson, M. Allman, J. Chu, M. Sargent, "Computing TCP's Retransmission Timer", RFC 6298, IETF, 2011.
A device's "round trip" is the time from sending a sample to its verdict: on a busy node that is
mostly the node's queue delay (seconds), so a fixed timeout either resends samples that were never
lost or waits too long for ones that were.
"""

from __future__ import annotations

ALPHA = 1 / 8  # RFC 6298, section 2: gain of SRTT
BETA = 1 / 4  # gain of RTTVAR
K = 4  # RTO = SRTT + K * RTTVAR


class RtoEstimator:
    """SRTT, RTTVAR and the retransmission timeout (RTO) of RFC 6298, "Computing TCP's Retransmission Timer".

    * :meth:`update` takes one round-trip measurement R (seconds). The first sets SRTT = R and
      RTTVAR = R / 2 (section 2.2); each later one RTTVAR = (1 - beta) RTTVAR + beta |SRTT - R|, then
      SRTT = (1 - alpha) SRTT + alpha R (2.3). RTO = SRTT + max(G, K RTTVAR), kept within
      ``[min_s, max_s]`` (2.4, 2.5). A measurement also ends any backoff (5.7).
    * :meth:`backoff` doubles the RTO after a timeout, up to ``max_s`` (5.5).
    * :meth:`get` is the RTO now; ``initial_s`` until the first measurement (2.1).

    Karn's rule (section 3) is the caller's part: never measure a sample that was sent twice, since
    its answer may belong to either copy.
    """

    def __init__(self, initial_s: float = 1.0, min_s: float = 1.0, max_s: float = 60.0, granularity_s: float = 0.0) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"RTO bounds must satisfy 0 < min <= max (got {min_s}, {max_s})")
        if initial_s <= 0:
            raise ValueError(f"initial RTO must be > 0 s (got {initial_s})")
        self.min_s, self.max_s, self.granularity_s = min_s, max_s, granularity_s
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self._rto = self._clamp(initial_s)
        self.samples = 0  # measurements taken
        self.backoffs = 0  # consecutive timeouts since the last measurement

    def _clamp(self, rto: float) -> float:
        return min(self.max_s, max(self.min_s, rto))

    def update(self, rtt_s: float) -> float:
        """Take one round-trip measurement (seconds); returns the new RTO."""
        rtt_s = max(0.0, float(rtt_s))
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt_s)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt_s
        self._rto = self._clamp(self.srtt + max(self.granularity_s, K * self.rttvar))
        self.samples += 1
        self.backoffs = 0
        return self._rto

    def backoff(self) -> float:
        """A timeout: double the RTO (at most ``max_s``); returns it."""
        self._rto = self._clamp(2 * self._rto)
        self.backoffs += 1
        return self._rto

    def get(self) -> float:
        """The retransmission timeout now, in seconds."""
        return self._rto
