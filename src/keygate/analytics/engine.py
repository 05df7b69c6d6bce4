"""The analyser: reads the request path's features off the request path, keeps every key's
baseline and windows, runs the detectors and returns their events.

It takes its clock as a parameter (:meth:`Analyser.process` is given ``now``), so the evaluation
(``benchmarks/anomalies.py``) replays fourteen simulated days through the very same code in
seconds. It does no I/O: what happens to an event (stored, alerted, acted on) is
:mod:`keygate.analytics.watch`'s business.

Per-request detectors (the window ones are in :mod:`keygate.analytics.detectors`):

- **new_network**: after the key's learning period, a client network (IPv4 /24, IPv6 /48 by
  default) neither the key nor its team ever used. Score 1. The network is learned once reported.
- **many_networks**: ``threshold`` or more such new networks within ``window`` (a leaked key used
  from many places at once). Score: new networks / threshold.
- **team_surge**: a team's keys together far above the team's peak (``_team_rate``).
- **new_usage**: after learning, a model, route or user-agent family (versions stripped) the key
  (or, for models, its team) never used, seen ``threshold`` times within ``window``. Score 1.
- **odd_hours**: after learning, ``threshold`` requests within ``window`` in hours of the day
  (UTC) the key was never active in. Score: requests / threshold.
- **credential_stuffing**: ``threshold`` distinct invalid or revoked credentials from one address
  within ``window`` (or twice that from one network, over three addresses or more). Score:
  distinct credentials / threshold. Loopback addresses are not counted (a local reverse proxy
  outside ``trusted_proxies`` is every client at once).
- **prefix_failures**: failures for one visible key prefix from ``threshold`` distinct addresses
  within ``window``. Score: addresses / threshold.
- **honeytoken**: any use of a honeytoken key. Score 1.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import Any

from ..anomalyconf import AnomalySettings
from .baselines import KeyState, TeamState, hour_of_day, hour_of_week, remember
from .detectors import Event, rate_detectors
from .features import DENIALS, FAILURE, HONEYTOKEN, Feature, agent_family, network_of

log = logging.getLogger("keygate.anomaly")
_MAX_FAILURE_SUBJECTS = 50_000  # addresses, networks and prefixes with failures tracked at once


class Analyser:
    def __init__(self, settings: AnomalySettings) -> None:
        self.settings = settings
        self.keys: dict[str, KeyState] = {}
        self.teams: dict[str, TeamState] = {}
        # authentication failures: address / network -> credential fingerprint -> last seen;
        # prefix -> address -> last seen
        self._by_addr: dict[str, dict[str, float]] = {}
        self._by_net: dict[str, dict[str, float]] = {}
        self._by_prefix: dict[str, dict[str, float]] = {}
        self._cooldown: dict[str, float] = {}  # detector:subject (no key) -> quiet until
        self._events: list[Event] = []
        self._now = 0.0
        self.dirty: set[str] = set()  # scopes ("key:ID", "team:ID") changed since the last snapshot
        d = settings.detectors
        self._minutes = max(d["surge"].window, d["denial_burst"].window, 300) * 2
        self._hours = d["slow_exfiltration"].window

    # -- the pass --------------------------------------------------------------------------------

    def process(self, batch: list[Feature], now: float) -> list[Event]:
        """Fold ``batch`` in (in time order), run every detector, and return the new events."""
        self._events = []
        touched: dict[str, KeyState] = {}
        teams: set[str] = set()
        for f in batch:
            ts, key_id, team_id, ip, agent, model, _, _, code, _, _, kind = f
            self._now = ts
            if kind == FAILURE:
                self._failure(ts, ip, agent or "-", model or "?", code)
            elif kind == HONEYTOKEN:
                self._emit("honeytoken", None, key_id, ip, 1.0, {"client_ip": ip}, team_id)
            elif key_id is not None:
                touched[key_id] = self._request(f)
                if team_id is not None:
                    teams.add(team_id)
        self._now = now
        s = self.settings
        for key_id, state in touched.items():
            learned = state.learned(now, s.learning_period, s.min_learning_requests)
            rate_detectors(s, key_id, state, now, learned, self._emit_for)
            state.prune(now, self._minutes, self._hours, learned)
        for team_id in teams:
            self._team_rate(team_id, self.teams[team_id], now)
        if len(self.keys) > s.max_keys:
            for key_id in sorted(self.keys, key=lambda k: self.keys[k].last)[: len(self.keys) - s.max_keys]:
                del self.keys[key_id]
        return self._events

    def prune(self, now: float) -> None:
        """Forget failure windows and cool-downs that are over (called now and then)."""
        horizon = now - max(
            self.settings.detectors["credential_stuffing"].window,
            self.settings.detectors["prefix_failures"].window,
        )
        for table in (self._by_addr, self._by_net, self._by_prefix):
            for subject in [k for k, seen in table.items() if max(seen.values(), default=0) < horizon]:
                del table[subject]
        self._cooldown = {k: v for k, v in self._cooldown.items() if v > now}

    # -- events ----------------------------------------------------------------------------------

    def _emit(
        self,
        detector: str,
        state: KeyState | None,
        key_id: str | None,
        subject: str,
        score: float,
        evidence: dict[str, Any],
        team_id: str | None = None,
    ) -> None:
        cfg = self.settings.detectors[detector]
        cooldowns = state.cooldown if state is not None else self._cooldown
        mark = f"{detector}:{subject}"
        if cooldowns.get(mark, 0.0) > self._now:
            return
        cooldowns[mark] = self._now + cfg.window
        if state is not None:
            team_id = state.team
            state.hour_flagged.add(int(self._now // 3600))
            if cfg.action == "quarantine" and self.settings.mode == "act":
                state.quarantined = True
        self._events.append(
            Event(
                self._now,
                detector,
                key_id,
                team_id,
                subject,
                score,
                cfg.action,
                evidence,
                acted=self.settings.mode == "act",
            )
        )

    def _cooling(self, detector: str, subject: str) -> bool:
        return self._cooldown.get(f"{detector}:{subject}", 0.0) > self._now

    def _emit_for(
        self,
        detector: str,
        state: KeyState | None,
        key_id: str | None,
        subject: str,
        score: float,
        evidence: dict[str, Any],
    ) -> None:
        self._emit(detector, state, key_id, subject, score, evidence)

    def release(self, key_id: str) -> None:
        """An operator released the key: it learns again, and its recent novelties are forgiven."""
        state = self.keys.get(key_id)
        if state is not None:
            state.quarantined = False
            state.new_nets.clear()
            state.cooldown.clear()

    # -- one authenticated request ---------------------------------------------------------------

    def _request(self, f: Feature) -> KeyState:
        ts, key_id, team_id, ip, agent, model, route, status, code, tokens, prompt, _ = f
        assert key_id is not None
        s = self.settings
        state = self.keys.get(key_id)
        if state is None:
            state = self.keys[key_id] = KeyState(ts, team_id)
        team = self._team(team_id, ts) if team_id is not None else None
        state.team = team_id
        if team is not None:
            team.add(ts)
        learned = state.learned(ts, s.learning_period, s.min_learning_requests)
        state.n += 1
        state.last = ts
        self.dirty.add("key:" + key_id)
        state.add(ts, tokens, status in DENIALS and code is not None)
        if prompt > state.prompt_max and not learned:
            state.prompt_max = prompt

        net = network_of(ip, s.ipv4_prefix, s.ipv6_prefix)
        if net in state.nets:
            state.nets[net] = ts
        elif not learned or (team is not None and net in team.nets):
            state.see("nets", net, ts)
        else:
            self._new_network(key_id, state, net, ip, ts)
        if team is not None:
            remember(team.nets, net, ts, 256)
            self.dirty.add("team:" + str(team_id))

        for kind, value in (("models", model or "-"), ("routes", route), ("agents", agent_family(agent))):
            seen: dict[str, float] = getattr(state, kind)
            if value in seen:
                seen[value] = ts
            elif not learned or (kind == "models" and team is not None and value in team.models):
                state.see(kind, value, ts)
            else:
                self._novelty(key_id, state, kind, value, ts)
        if team is not None and model and model in state.models:  # (not a novelty still pending)
            remember(team.models, model, ts, 256)

        hod = hour_of_day(ts)
        if not learned:
            state.hod_active[hod] += 1
        elif state.hod_active[hod] == 0 and not state.quarantined:
            odd = s.detectors["odd_hours"]
            state.odd = [t for t in state.odd if t > ts - odd.window]
            state.odd.append(ts)
            if len(state.odd) >= odd.threshold:
                hours = sorted({hour_of_day(t) for t in state.odd})
                self._emit(
                    "odd_hours",
                    state,
                    key_id,
                    key_id,
                    len(state.odd) / odd.threshold,
                    {"requests": len(state.odd), "hours_utc": hours, "active_hours_utc": _active(state)},
                )
                state.odd.clear()
                for h in hours:
                    state.hod_active[h] += 1
        return state

    def _new_network(self, key_id: str, state: KeyState, net: str, ip: str, ts: float) -> None:
        many = self.settings.detectors["many_networks"]
        state.new_nets = {n: t for n, t in state.new_nets.items() if t > ts - many.window}
        state.new_nets[net] = ts
        known = sorted(state.nets, key=state.nets.__getitem__, reverse=True)[:5]
        if state.cooldown.get(f"many_networks:{key_id}", 0.0) <= ts:  # (not one alert per network of a leak)
            self._emit(
                "new_network",
                state,
                key_id,
                net,
                1.0,
                {"network": net, "client_ip": ip, "known_networks": known},
            )
        if len(state.new_nets) >= many.threshold:
            self._emit(
                "many_networks",
                state,
                key_id,
                key_id,
                len(state.new_nets) / many.threshold,
                {
                    "new_networks": sorted(state.new_nets)[:20],
                    "count": len(state.new_nets),
                    "window_s": many.window,
                    "known_networks": known,
                },
            )
        state.see("nets", net, ts)

    def _novelty(self, key_id: str, state: KeyState, kind: str, value: str, ts: float) -> None:
        rule = self.settings.detectors["new_usage"]
        times = [t for t in state.pending.get((kind, value), []) if t > ts - rule.window]
        times.append(ts)
        state.pending[(kind, value)] = times
        if len(state.pending) > 64:  # bounded: the oldest pending novelty goes
            del state.pending[min(state.pending, key=lambda k: state.pending[k][-1])]
        if len(times) >= rule.threshold:
            known = sorted(getattr(state, kind), key=getattr(state, kind).__getitem__, reverse=True)[:5]
            what = kind[:-1] if kind != "agents" else "user_agent"
            self._emit(
                "new_usage",
                state,
                key_id,
                f"{what}:{value[:80]}",
                1.0,
                {"what": what, "value": value[:120], "requests": len(times), "known": known},
            )
            state.pending.pop((kind, value), None)
            state.see(kind, value, ts)

    def _team(self, team_id: str, ts: float) -> TeamState:
        team = self.teams.get(team_id)
        if team is None:
            team = self.teams[team_id] = TeamState(ts)
        elif team.first == 0.0:  # (a baseline stored before teams kept their first request)
            team.first = ts
        return team

    def _team_rate(self, team_id: str, team: TeamState, now: float) -> None:
        """team_surge: the team's keys together above ``factor`` times the team's peak for the
        time (the larger of this hour of the week's and a quarter of the highest ever), at least
        ``threshold`` requests in ``window``; after the learning period. Score: observed / baseline."""
        rule = self.settings.detectors["team_surge"]
        learned = now - team.first >= self.settings.learning_period
        requests = team.window(now, rule.window)
        if learned:
            base = max(team.how_peak[hour_of_week(now)], team.peak5 / 4, 1.0)
            if requests >= rule.threshold and requests > rule.factor * base:
                team.block_flagged = True
                if team.cooldown <= now:
                    team.cooldown = now + rule.window
                    self._events.append(
                        Event(
                            now,
                            "team_surge",
                            None,
                            team_id,
                            f"team:{team_id}",
                            requests / base,
                            rule.action,
                            {"observed": requests, "baseline": round(base, 1), "window_s": rule.window},
                            acted=self.settings.mode == "act",
                        )
                    )
        team.learn(now, learned, self._minutes)

    # -- authentication failures -----------------------------------------------------------------

    def _failure(self, ts: float, ip: str, fp: str, prefix: str, code: str | None) -> None:
        s = self.settings
        stuffing, spray = s.detectors["credential_stuffing"], s.detectors["prefix_failures"]
        if len(self._by_addr) > _MAX_FAILURE_SUBJECTS:
            self.prune(ts)
        net = network_of(ip, s.ipv4_prefix, s.ipv6_prefix)
        if _loopback(ip):
            # The host itself, or a local reverse proxy not listed in trusted_proxies: every client
            # behind it shares the address, and blocking it would block them all.
            net = ""
        for table, subject, need in (
            (self._by_addr, ip, stuffing.threshold),
            (self._by_net, net, 2 * stuffing.threshold),
        ):
            if not net:
                break
            seen = table.setdefault(subject, {})
            seen[fp] = ts
            if len(seen) >= need:
                recent = {k: t for k, t in seen.items() if t > ts - stuffing.window}
                table[subject] = recent
                if len(recent) < need or self._cooling("credential_stuffing", subject):
                    continue
                addresses = sorted(
                    {a for a, fps in self._by_addr.items() if a != "-" and _in(a, net, s) and fps}
                )
                if table is self._by_net and len(addresses) < 3:
                    continue
                self._emit(
                    "credential_stuffing",
                    None,
                    None,
                    subject,
                    len(recent) / stuffing.threshold,
                    {
                        "distinct_credentials": len(recent),
                        "client_ip": ip,
                        "network": net,
                        "addresses": addresses[:20],
                        "window_s": stuffing.window,
                    },
                )
        if prefix != "?":
            addrs = self._by_prefix.setdefault(prefix, {})
            addrs[ip] = ts
            if len(addrs) >= spray.threshold:
                recent = {a: t for a, t in addrs.items() if t > ts - spray.window}
                self._by_prefix[prefix] = recent
                if len(recent) >= spray.threshold:
                    self._emit(
                        "prefix_failures",
                        None,
                        None,
                        prefix,
                        len(recent) / spray.threshold,
                        {
                            "key_prefix": prefix,
                            "addresses": sorted(recent)[:20],
                            "count": len(recent),
                            "code": code,
                            "window_s": spray.window,
                        },
                    )

    # -- persistence -----------------------------------------------------------------------------

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        """The baselines changed since the last snapshot, as ``(scope, data)``."""
        out: list[tuple[str, dict[str, Any]]] = []
        for scope in sorted(self.dirty):
            kind, _, ident = scope.partition(":")
            state = self.keys.get(ident) if kind == "key" else self.teams.get(ident)
            if state is not None:
                out.append((scope, state.dump()))
        self.dirty = set()
        return out

    def restore(self, rows: dict[str, dict[str, Any]]) -> int:
        """Load stored baselines; how many were usable (a broken one is logged and skipped)."""
        loaded = 0
        for scope, data in rows.items():
            kind, _, ident = scope.partition(":")
            try:
                if kind == "key":
                    self.keys[ident] = KeyState.load(data)
                elif kind == "team":
                    self.teams[ident] = TeamState.load(data)
                else:
                    continue
            except (KeyError, TypeError, ValueError):
                log.warning("stored baseline could not be read; it is learned again", extra={"scope": scope})
                continue
            loaded += 1
        return loaded


@functools.lru_cache(maxsize=4096)
def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _active(state: KeyState) -> list[int]:
    return [h for h in range(24) if state.hod_active[h]]


def _in(ip: str, net: str, settings: AnomalySettings) -> bool:
    return network_of(ip, settings.ipv4_prefix, settings.ipv6_prefix) == net
