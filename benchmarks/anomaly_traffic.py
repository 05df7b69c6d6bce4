"""A seeded, labelled traffic trace for the anomaly evaluation (keygate-independent).

``generate(seed, keys, days, strength)`` returns the requests of ``keys`` client keys over
``days`` simulated days, each key following one of four normal profiles, with attacks of every
class injected at known times after the first week. Each request is a plain tuple in the shape
keygate's request path records (``keygate.analytics.features.Feature``)::

    (ts, key_id, team_id, client_ip, user_agent, model, route, status, error_code, tokens,
     prompt_tokens, kind)    kind: 0 request, 1 authentication failure, 2 honeytoken

with a label: the index of the attack it belongs to, or -1 for normal traffic.

Normal profiles (each key draws its own parameters):

- ``office``: weekdays only, from a start hour (7-10 UTC) for 8-10 hours, 0.3-3 requests a
  minute with a lunch dip, from the team's office network (a few addresses) or the team VPN;
- ``batch``: a nightly job (start 0-4 UTC, 30-90 minutes) at 10-40 requests a minute, from one
  data-centre address, every night;
- ``steady``: a service around the clock, 0.2-3 requests a minute with a mild daily swing, from
  one to three cloud NAT networks;
- ``bursty``: an app active 7-23 UTC at 0.1-0.5 a minute with 3-8 bursts a day of 5-15
  minutes at 5-30 a minute.

All keys have a few denials (429, 400) and rare typos of their own key (one failure from a
known address). SDK versions change on day 10 (a user-agent version bump is not new usage).

Attacks (``strength`` scales their intensity; 1 is the default; "quiet" ones are slow on purpose):
leaked key (20 new networks in minutes), leaked key quiet (one new network, a request every few
minutes), request surge, token surge, slow exfiltration (hours at 3-5 times the usual rate),
credential stuffing (one address, hundreds of keys in minutes), quiet stuffing (one key every two
minutes), a key prefix tried from many addresses, policy probing (denials), a never-used model,
use at never-active hours, a honeytoken.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY = 86400.0
START = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC

Row = tuple[float, str | None, str | None, str, str | None, str | None, str, int, str | None, int, int, int]


@dataclass
class Attack:
    kind: str
    subject: str  # a key id, an address or a key prefix: what an event names
    start: float
    end: float
    expected: tuple[str, ...]  # detectors that should report it
    fast: bool  # must be detected within five simulated minutes
    key_id: str | None = None
    # how long after its end an event still belongs to it: its requests stay in the detectors'
    # windows that long (six hours for slow exfiltration)
    grace: float = 1800.0
    team: str | None = None  # the attacked key's team: a team event during the attack is about it
    # One of the attack classes (the targets hold for these); False: an extra class,
    # reported but not a target (a whole team's moderate surge)
    required: bool = True


@dataclass
class Trace:
    rows: list[tuple[Row, int]]
    attacks: list[Attack]
    keys: int
    days: float
    profiles: dict[str, str] = field(default_factory=dict)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _net(rng: random.Random) -> str:
    return f"{rng.randint(11, 199)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}"


@dataclass
class _Key:
    id: str
    team: str
    profile: str
    addresses: list[str]
    models: list[str]
    agent: str
    routes: list[str]
    rate: float
    prompt: int
    params: dict[str, float]


def _rate(k: _Key, ts: float, rng_day: random.Random) -> float:
    """Requests per minute of a key's normal traffic at ``ts``."""
    day = int((ts - START) // DAY)
    hour = (ts % DAY) / 3600
    weekday = day % 7
    p = k.params
    if k.profile == "office":
        if weekday >= 5 or not (p["start"] <= hour < p["start"] + p["length"]):
            return 0.0
        return k.rate * (0.4 if 12 <= hour < 13 else 1.0)
    if k.profile == "batch":
        return k.rate if p["start"] <= hour < p["start"] + p["length"] else 0.0
    if k.profile == "steady":
        return k.rate * (1 + 0.3 * math.sin((hour - 6) / 24 * 2 * math.pi))
    # bursty
    if not 7 <= hour < 23:
        return 0.0
    return k.rate


def generate(
    seed: int = 1, keys: int = 60, days: float = 14, strength: float = 1.0, attack_after: float = 7.5
) -> Trace:
    """The trace; attacks start after ``attack_after`` days (the learning period is 7 days by
    default: smaller traces for tests learn for less and are attacked sooner)."""
    rng = random.Random(seed)
    profiles = ["office", "batch", "steady", "bursty"]
    teams = [f"team_{i}" for i in range(max(1, keys // 6))]
    team_nets = {t: (_net(rng), _net(rng)) for t in teams}  # office, VPN
    all_keys: list[_Key] = []
    for i in range(keys):
        profile = profiles[i % 4]
        team = teams[i % len(teams)]
        office, vpn = team_nets[team]
        if profile == "office":
            addrs = [f"{office}.{rng.randint(2, 250)}" for _ in range(3)] + [f"{vpn}.{rng.randint(2, 250)}"]
            params = {"start": rng.randint(7, 10), "length": rng.randint(8, 10)}
            rate = rng.uniform(0.3, 3)
        elif profile == "batch":
            addrs = [f"{_net(rng)}.{rng.randint(2, 250)}"]
            params = {"start": rng.randint(0, 4), "length": rng.uniform(0.5, 1.5)}
            rate = rng.uniform(10, 40)
        elif profile == "steady":
            addrs = [f"{_net(rng)}.{rng.randint(2, 250)}" for _ in range(rng.randint(1, 3))]
            params = {}
            rate = rng.uniform(0.2, 3)
        else:
            addrs = [f"{_net(rng)}.{rng.randint(2, 250)}" for _ in range(2)]
            params = {"bursts": rng.randint(3, 8)}
            rate = rng.uniform(0.1, 0.5)
        models = rng.sample(
            ["gpt-4o-mini", "gpt-4.1-mini", "text-embedding-3-small", "gpt-4.1"], rng.randint(1, 2)
        )
        agent = rng.choice(
            ["OpenAI/Python 1.55.{v}", "OpenAI/JS 4.7{v}.0", "python-httpx/0.2{v}", "langchain/0.3.{v}"]
        )
        routes = ["embeddings"] if models == ["text-embedding-3-small"] else ["chat.completions"]
        all_keys.append(
            _Key(
                f"key_{i:03d}",
                team,
                profile,
                addrs,
                models,
                agent,
                routes,
                rate,
                rng.randint(50, 2000),
                params,
            )
        )
    rows: list[tuple[Row, int]] = []

    def request(
        k: _Key,
        ts: float,
        label: int,
        *,
        ip: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        status: int = 200,
        code: str | None = None,
        prompt: int | None = None,
        r: random.Random = rng,
    ) -> None:
        day = int((ts - START) // DAY)
        ua = agent if agent is not None else k.agent.format(v=1 if day < 10 else 2)
        p = prompt if prompt is not None else max(1, int(r.lognormvariate(math.log(k.prompt), 0.5)))
        out = 0 if status >= 400 else int(r.uniform(10, 400))
        rows.append(
            (
                (
                    ts,
                    k.id,
                    k.team,
                    ip or r.choice(k.addresses),
                    ua,
                    model or r.choice(k.models),
                    k.routes[0],
                    status,
                    code,
                    (p + out) if status < 400 else 0,
                    p if status < 400 else 0,
                    0,
                ),
                label,
            )
        )

    # -- normal traffic, in five-minute steps -------------------------------------------------------
    end = START + days * DAY
    for k in all_keys:
        krng = random.Random(f"{seed}:{k.id}")
        bursts: list[tuple[float, float]] = []
        if k.profile == "bursty":
            for d in range(int(days) + 1):
                for _ in range(int(k.params["bursts"])):
                    b = START + d * DAY + krng.uniform(7, 22.5) * 3600
                    bursts.append((b, b + krng.uniform(5, 15) * 60))
        t = START
        while t < end:
            lam = _rate(k, t, krng) * 5
            if k.profile == "bursty" and any(a <= t < b for a, b in bursts):
                lam = krng.uniform(5, 30) * 5
            for _ in range(_poisson(krng, lam)):
                ts = t + krng.random() * 300
                roll = krng.random()
                if roll < 0.004:
                    request(k, ts, -1, status=429, code="rate_limit_exceeded", r=krng)
                elif roll < 0.006:
                    request(k, ts, -1, status=400, code="invalid_request", r=krng)
                elif roll < 0.0065:  # a typo of the key: one failure from a known address
                    rows.append(
                        (
                            (
                                ts,
                                None,
                                None,
                                krng.choice(k.addresses),
                                f"typo-{k.id}-{int(ts) % 3}",
                                "kg_" + k.id[-4:],
                                "-",
                                401,
                                "invalid_api_key",
                                0,
                                0,
                                1,
                            ),
                            -1,
                        )
                    )
                else:
                    request(k, ts, -1, r=krng)
            t += 300

    # -- attacks ----------------------------------------------------------------------------------------
    attacks: list[Attack] = []
    arng = random.Random(f"{seed}:attacks")
    by_profile = {p: [k for k in all_keys if k.profile == p] for p in profiles}
    used: set[str] = set()

    def pick(*wanted: str) -> _Key:
        pool = [k for p in wanted for k in by_profile[p] if k.id not in used] or [
            k for k in all_keys if k.id not in used
        ]
        if not pool:
            raise ValueError("too few keys for one attack per key: use 12 or more")
        k = arng.choice(pool)
        used.add(k.id)
        return k

    def when(k: _Key | None, active: bool = True) -> float:
        """A time after the first week: inside the key's active hours when ``active``."""
        for _ in range(2000):
            ts = START + arng.uniform(attack_after, days - 0.6) * DAY
            if k is None or not active or _rate(k, ts, arng) > 0:
                return ts
        return START + 8 * DAY + 10 * 3600

    def add(
        kind: str,
        subject: str,
        start: float,
        end_: float,
        expected: tuple[str, ...],
        fast: bool,
        key: _Key | None = None,
    ) -> int:
        attacks.append(
            Attack(
                kind,
                subject,
                start,
                end_,
                expected,
                fast,
                key.id if key else None,
                team=key.team if key else None,
            )
        )
        if kind == "honeytoken":
            attacks[-1].key_id = subject
        if kind == "slow_exfiltration":
            attacks[-1].grace = 6 * 3600.0
        return len(attacks) - 1

    s = strength
    # the attacks that need one profile choose first: use at never-active hours needs an office
    # key, slow exfiltration a steady one
    odd_key = pick("office")
    slow_key = pick("steady")
    # leaked key: 20 new networks within ten minutes
    k = pick("steady", "office")
    t0 = when(k)
    a = add("leaked_key", k.id, t0, t0 + 600, ("many_networks",), True, k)
    nets = [f"{_net(arng)}.{arng.randint(2, 250)}" for _ in range(max(6, int(20 * s)))]
    for i, ip in enumerate(nets):
        for j in range(arng.randint(2, 6)):
            request(k, t0 + i * 600 / len(nets) + j * 7, a, ip=ip, agent="curl/8.5.0", r=arng)
    # leaked key, quiet: one new network, a request every five minutes for two hours
    k = pick("office", "steady")
    t0 = when(k)
    a = add("leaked_key_quiet", k.id, t0, t0 + 7200, ("new_network",), False, k)
    ip = f"{_net(arng)}.{arng.randint(2, 250)}"
    for i in range(24):
        request(k, t0 + i * 300, a, ip=ip, r=arng)
    # request surge: 10-20 times the key's rate for 30 minutes, from its own address
    k = pick("steady", "office")
    t0 = when(k)
    a = add("surge", k.id, t0, t0 + 1800, ("surge",), True, k)
    per_min = max(30.0, k.rate * arng.uniform(15, 25) * s)
    for i in range(int(per_min * 30)):
        request(k, t0 + i * 60 / per_min, a, r=arng)
    # token surge: the usual rate, prompts 50 times larger
    k = pick("steady", "bursty")
    t0 = when(k)
    a = add("token_surge", k.id, t0, t0 + 1800, ("surge",), True, k)
    per_min = max(6.0, k.rate * 3)
    for i in range(int(per_min * 30)):
        request(k, t0 + i * 60 / per_min, a, prompt=int(max(k.prompt, 500) * 50 * s), r=arng)
    # slow exfiltration: twelve hours at three to five times the key's usual rate, under any surge
    k = slow_key
    t0 = when(k, active=False)
    a = add("slow_exfiltration", k.id, t0, t0 + 12 * 3600, ("slow_exfiltration", "surge"), False, k)
    per_min = max(1.0, k.rate * arng.uniform(3, 5) * s)
    for i in range(int(per_min * 12 * 60)):
        request(k, t0 + i * 60 / per_min, a, r=arng)
    # credential stuffing: one address, 300 keys in four minutes
    ip = f"{_net(arng)}.{arng.randint(2, 250)}"
    t0 = when(None)
    a = add("credential_stuffing", ip, t0, t0 + 240, ("credential_stuffing",), True)
    count = max(20, int(300 * s))
    for i in range(count):
        rows.append(
            (
                (
                    t0 + i * 240 / count,
                    None,
                    None,
                    ip,
                    f"stuff-{i}",
                    f"kg_{i % 97:04d}",
                    "-",
                    401,
                    "invalid_api_key",
                    0,
                    0,
                    1,
                ),
                a,
            )
        )
    # quiet stuffing: one key every two minutes for an hour
    ip = f"{_net(arng)}.{arng.randint(2, 250)}"
    t0 = when(None)
    a = add("credential_stuffing_quiet", ip, t0, t0 + 3600, ("credential_stuffing",), False)
    for i in range(30):
        rows.append(
            (
                (
                    t0 + i * 120,
                    None,
                    None,
                    ip,
                    f"quiet-{i}",
                    "kg_Qz" + str(i % 10) + "x",
                    "-",
                    401,
                    "invalid_api_key",
                    0,
                    0,
                    1,
                ),
                a,
            )
        )
    # a revoked key's prefix tried from many addresses (a leaked, revoked key)
    t0 = when(None)
    a = add("prefix_failures", "kg_Rvk9", t0, t0 + 600, ("prefix_failures",), False)
    for i in range(12):
        rows.append(
            (
                (
                    t0 + i * 50,
                    None,
                    None,
                    f"{_net(arng)}.{arng.randint(2, 250)}",
                    "revoked-1",
                    "kg_Rvk9",
                    "-",
                    401,
                    "revoked_api_key",
                    0,
                    0,
                    1,
                ),
                a,
            )
        )
    # probing: a burst of policy denials
    k = pick("steady", "office", "bursty")
    t0 = when(k)
    a = add("denial_burst", k.id, t0, t0 + 600, ("denial_burst",), False, k)
    for i in range(max(12, int(40 * s))):
        request(k, t0 + i * 10, a, model=f"probe-model-{i}", status=403, code="model_not_allowed", r=arng)
    # a never-used model, a few calls over an hour
    k = pick("steady", "office")
    t0 = when(k)
    a = add("new_model", k.id, t0, t0 + 3600, ("new_usage",), False, k)
    for i in range(8):
        request(k, t0 + i * 450, a, model="o3-pro", r=arng)
    # use at never-active hours: an office key at 03:00 UTC on a weekday
    k = odd_key
    day = int(arng.uniform(attack_after + 0.5, days - 1))
    day = day if day % 7 < 5 else day + (7 - day % 7)
    t0 = START + min(day, int(days) - 1) * DAY + 3 * 3600
    a = add("odd_hours", k.id, t0, t0 + 1800, ("odd_hours",), False, k)
    for i in range(20):
        request(k, t0 + i * 90, a, r=arng)
    # a whole team at six times its keys' rates for 30 minutes (a shared deployment gone wrong)
    team = all_keys[0].team
    members = [m for m in all_keys if m.team == team]
    for _ in range(200):
        t0 = when(None)
        if sum(_rate(m, t0, arng) for m in members) > 0:
            break
    a = add("team_surge", f"team:{team}", t0, t0 + 1800, ("team_surge", "surge"), False)
    attacks[a].team = team
    attacks[a].required = False
    for m in members:
        per_min = _rate(m, t0, arng) * 5 * s
        for i in range(int(per_min * 30)):
            request(m, t0 + i * 60 / per_min, a, r=arng)
    # a honeytoken
    ip = f"{_net(arng)}.{arng.randint(2, 250)}"
    t0 = when(None)
    a = add("honeytoken", "key_honey", t0, t0 + 60, ("honeytoken",), True)
    rows.append(((t0, "key_honey", None, ip, "curl/8.5.0", None, "-", 401, "invalid_api_key", 0, 0, 2), a))

    rows.sort(key=lambda r: r[0][0])
    return Trace(rows, attacks, keys, days, {k.id: k.profile for k in all_keys})
