"""``lstm-stream``: the command line (daemon, demo, benchmarks, configuration)."""

from __future__ import annotations

import argparse
import json
import sys

from daemon.settings import EX_CONFIG, ConfigError, load_settings, masked_dump


def _setup_logging(level: str) -> None:
    """Plain lines under journald (it adds its own timestamps), timestamped on a terminal."""
    import logging
    import os

    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt)


RUN_FLAGS = {
    # flag -> dotted settings key (CLI flags win over environment and file)
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
    "topic": "mqtt.topics",
    "http_bind": "http.bind",
    "http_port": "http.port",
    "state_dir": "state.directory",
    "model": "model_path",
    "log_level": "log.level",
}


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {key: getattr(args, flag) for flag, key in RUN_FLAGS.items()}
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    _setup_logging(settings.log.level)
    from daemon.heap import limit_malloc_arenas
    from daemon.service.service import Service

    limit_malloc_arenas()  # before the service starts its threads
    return Service(settings).run()


def _cmd_demo(args: argparse.Namespace) -> int:
    from daemon.commands.demo.run import run_demo

    return run_demo(
        duration=args.duration,
        sensors=args.sensors,
        rate=args.rate,
        embedded_broker=args.embedded_broker,
        port=args.port,
        http_port=args.http_port,
        seed=args.seed,
        state_dir=args.state_dir,
        status_every=args.status_every,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "engine":
        from lstm_stream.bench import run

        streams = tuple(int(s) for s in args.streams.split(","))
        print(json.dumps(run(seconds=args.seconds, streams=streams, look_back=args.look_back), indent=2))
        return 0
    if args.what == "per-call":
        from lstm_stream.bench import per_call

        n_streams = max(int(s) for s in args.streams.split(","))
        print(json.dumps(per_call(n_streams=n_streams), indent=2))
        return 0
    if args.what == "e2e":
        from daemon.commands.bench.e2e import run_cli

        return run_cli(args)
    if args.what == "scale":
        from daemon.commands.bench.scale import run_cli as run_scale

        return run_scale(args)
    print(f"unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file if args.action == "check" else args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    if args.action == "show":
        print(json.dumps(masked_dump(settings), indent=2, default=str))
    else:
        print(f"{args.file}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="lstm-stream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (what systemd starts)")
    run.add_argument("--config", help="TOML file (default /etc/lstm-stream/config.toml, optional)")
    run.add_argument("--mqtt-host", help="broker host (mqtt.host)")
    run.add_argument("--mqtt-port", type=int, help="broker port (mqtt.port)")
    run.add_argument("--topic", action="append", help="topic filter, repeatable (mqtt.topics)")
    run.add_argument("--http-bind", help="address for /metrics and /healthz (http.bind)")
    run.add_argument("--http-port", type=int, help="port for /metrics and /healthz (http.port)")
    run.add_argument(
        "--state-dir", help="checkpoint folder (state.directory; $STATE_DIRECTORY under systemd)"
    )
    run.add_argument(
        "--model", help="model checkpoint to start from when there is no saved state (model_path)"
    )
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (log.level)")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo",
        help="a broker, simulated sensors and the daemon on this machine; anomalies printed as flagged",
        description="Starts an MQTT broker on 127.0.0.1 (Mosquitto when installed, else the embedded "
        "amqtt from the 'demo' extra), simulated plant sensors with injected anomalies, and the daemon; "
        "prints the metrics URL and the anomaly topic, then every anomaly as it is flagged.",
    )
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    demo.add_argument("--sensors", type=int, default=8, help="number of simulated sensors (default 8)")
    demo.add_argument("--rate", type=float, default=20.0, help="simulation steps per second (default 20)")
    demo.add_argument(
        "--embedded-broker", action="store_true", help="the embedded amqtt broker even if Mosquitto exists"
    )
    demo.add_argument("--port", type=int, help="MQTT broker port; 0 = any free one (default 1883 if free)")
    demo.add_argument("--http-port", type=int, help="metrics port; 0 = any free one (default 9464 if free)")
    demo.add_argument(
        "--state-dir", help="keep the daemon's checkpoints here (default: a temporary folder, removed)"
    )
    demo.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines")
    demo.add_argument("--seed", type=int, default=0, help="simulator seed")
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks that print one JSON object")
    bench.add_argument(
        "what",
        choices=["engine", "per-call", "e2e", "scale"],
        help="engine: Engine.process stateful vs window mode; per-call: us per sample of Engine.process "
        "at batch 1/50/500/5000 (shipped model, default config); e2e: the daemon through Mosquitto; "
        "scale: 1 and 2 NATS workers, failover and the MQTT path through a real nats-server",
    )
    bench.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    bench.add_argument("--streams", default="1000,10000", help="comma-separated stream counts")
    bench.add_argument("--look-back", type=int, default=32)
    from daemon.commands.bench.options import add_arguments as add_e2e_arguments

    add_e2e_arguments(bench)
    from daemon.commands.bench.scale import add_arguments as add_scale_arguments

    add_scale_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    cfg = sub.add_parser("config", help="show the effective settings or check a file")
    cfg.add_argument("action", choices=["show", "check"])
    cfg.add_argument("file", nargs="?", help="for check: the TOML file to validate")
    cfg.add_argument("--config", help="TOML file (default /etc/lstm-stream/config.toml)")
    cfg.set_defaults(func=_cmd_config)

    from daemon.commands.offline import add_offline_commands

    add_offline_commands(sub)
    from daemon.commands.nab import add_nab_commands

    add_nab_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lstm-stream`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) == "check" and not args.file:
        print("config check: give the file to check", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
