"""tether: RLHF with PPO for Hugging Face causal LMs (SFT, reward model, PPO, DPO, evaluation, the offline demo).

Each command reads a YAML config plus KEY=VALUE overrides into a typed config and calls the Python API.

``tether ppo --config ppo.yaml kl_coef=0.1 policy=runs/sft``; nested sections use dots (``ppo.kl_coef=0.1``). The
same overrides may be typed as flags (``--kl_coef 0.1``, ``--ppo.kl_coef=0.1``, ``--no-stop_at_eos``;
``tether.config.flags``), and the TRL / ``Trainer`` names users bring are aliases (``learning_rate``, ``cliprange``,
…; ``tether.config.aliases``, docs/cli.md). ``tether <command> --help`` lists every option with its type, default and
meaning, grouped by section and generated from the config class.
User errors print one line ``tether: error: <message>`` and exit 2; ``--debug`` shows tracebacks. Other exit codes
(docs/reliability.md): 3 a run stopped by repeated NaN/Inf, 75 pre-empted by SIGTERM/Ctrl-C after writing a checkpoint
(run the same command again to resume), 130 aborted, 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from tether.errors import Preempted

PROG = "tether"


class UsageError(ValueError):
    """A command-line usage error (unknown flag, missing argument)."""

    exit_code = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + message and exit; we print one line
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ---------------------------------------------------------------------------------------------- commands


def _config_classes() -> dict[str, tuple[type, str]]:
    from tether.config.compare import CompareConfig
    from tether.config.dpo import DPOConfig
    from tether.config.pipeline import DemoConfig, PipelineConfig
    from tether.config.ppo import PPOConfig
    from tether.config.rm import RMConfig
    from tether.config.sft import SFTConfig
    from tether.eval.compare import EvalConfig

    return {
        "sft": (SFTConfig, "supervised fine-tuning of a causal LM"),
        "rm": (RMConfig, "train a Bradley–Terry reward model on preference pairs"),
        "ppo": (PPOConfig, "PPO (or a critic-free estimator) against reward models / Python rewards"),
        "dpo": (DPOConfig, "DPO or IPO on preference pairs against the frozen starting model (no reward model)"),
        "pipeline": (PipelineConfig, "SFT → reward model → PPO (or SFT → DPO), each stage's output feeding the next"),
        "eval": (EvalConfig, "compare policies: judges, reward model, KL to the reference, perplexity"),
        "demo": (DemoConfig, "the offline sentiment demo (SmolLM2 + MiniLM RM + PPO, then evaluation)"),
        "compare": (CompareConfig, "several methods × seeds at a matched budget on one task, one report"),
        "doctor": (PPOConfig, "pre-flight checks of a PPO set-up (same options as ppo): a pass/fail table with fixes"),
    }


def _run_sft(cfg) -> int:
    from tether.pipeline import run_sft

    _require_dir(cfg.model, "model")
    run_sft(cfg, progress=sys.stderr.isatty())
    return 0


def _run_rm(cfg) -> int:
    from tether.pipeline import run_rm

    _require_dir(cfg.model, "model")
    run_rm(cfg, progress=sys.stderr.isatty())
    return 0


def _run_dpo(cfg) -> int:
    from tether.pipeline import run_dpo

    _require_dir(cfg.model, "model")
    run_dpo(cfg, progress=sys.stderr.isatty())
    return 0


def _run_ppo(cfg) -> int:
    from tether.pipeline import run_ppo

    _require_dir(cfg.policy, "policy")
    if cfg.prompts is None:
        from tether.errors import ConfigError

        raise ConfigError("prompts: required (a prompt file)")
    run_ppo(cfg)
    return 0


def _run_pipeline(cfg) -> int:
    from tether.pipeline import run_pipeline

    _require_dir(cfg.sft.model, "sft.model")
    if cfg.rm is not None:
        _require_dir(cfg.rm.model, "rm.model")
    run_pipeline(cfg)
    return 0


def _run_eval(cfg) -> int:
    from tether.eval.compare import run_eval

    run_eval(cfg)
    return 0


def _run_demo(cfg) -> int:
    from tether.demo import run_demo

    run_demo(cfg)
    return 0


def _run_compare(cfg) -> int:
    from tether.compare import run_compare

    run_compare(cfg)
    return 0


def _run_doctor(cfg) -> int:
    from tether.doctor import format_results, run_checks

    _require_dir(cfg.policy, "policy")
    results = run_checks(cfg)
    print(format_results(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


def _run_report(args: argparse.Namespace) -> int:
    from tether.monitor.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.html"
    path = write_report(args.runs, out, png=args.png)
    print(f"{PROG}: report written to {path}" + (f" (and {args.png})" if args.png else ""), flush=True)
    return 0


RUNNERS: dict[str, Callable[[Any], int]] = {
    "sft": _run_sft, "rm": _run_rm, "dpo": _run_dpo, "ppo": _run_ppo, "pipeline": _run_pipeline, "eval": _run_eval,
    "demo": _run_demo, "doctor": _run_doctor, "compare": _run_compare,
}


def _require_dir(path: Optional[str], what: str) -> None:
    """Fail early (before any output is written) when a required model directory is missing."""
    from tether.errors import ConfigError
    from tether.models.load import resolve_model

    if path is None:
        raise ConfigError(f"{what}: required (a save_pretrained model directory)")
    resolve_model(path, what)  # a directory, or a Hub name in the local cache; safetensors weights


# ---------------------------------------------------------------------------------------------- parser


def _version() -> str:
    """``tether X (python Y, torch Z, transformers W)`` from the installed metadata (nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from tether import __version__

    parts = [f"python {sys.version.split()[0]}"]
    for dist in ("torch", "transformers"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:  # pragma: no cover
            parts.append(f"{dist} not installed")
    return f"{PROG} {__version__} ({', '.join(parts)})"


def command_flags(name: str) -> dict[str, bool]:
    """The flags of a config command itself (not config options), each with whether it takes a value; every other
    ``--name`` on its command line is a config option (``tether.config.flags``)."""
    flags = {"-h": False, "--help": False, "--config": True, "--debug": False}
    if name in ("demo", "compare"):
        flags["--quick"] = False
    if name in RESUMABLE:
        flags.update({"--resume": True, "--no-resume": False})
    return flags


def _options_help(name: str, cls: type) -> str:
    """The option list of a config command's ``--help``: grouped, wrapped, then the shortcuts and TRL aliases."""
    import shutil
    import textwrap

    from tether.config.aliases import aliases_of
    from tether.config.base import help_text
    from tether.config.shortcuts import SHORTCUTS

    width = max(shutil.get_terminal_size((100, 24)).columns - 2, 50)
    text = help_text(cls, width, indent=2)
    wrap = dict(width=width, initial_indent="  ", subsequent_indent="      ", break_long_words=False,
                break_on_hyphens=False)
    if name in ("ppo", "doctor"):
        text += "\n  [shortcuts, expanded before validation]\n" + "\n".join(
            textwrap.fill(f"{k}: {v}", **wrap) for k, v in SHORTCUTS.items())
    elif name in ("pipeline", "demo"):
        text += "\n\n" + textwrap.fill("ppo.reward_model=DIR, ppo.reward_fn=FILE.py:fn and ppo.total_episodes=N "
                                         "are the PPO shortcuts (see `tether ppo --help`).", **wrap)
    table = aliases_of(cls)
    if table:
        items = [f"{a.name}→{a.target}" + "".join(f"+{o}" for o in a.also) for a in table.values() if a.target]
        refused = [a.name for a in table.values() if a.refuse]
        text += "\n\n" + textwrap.fill("TRL / Trainer names accepted: " + ", ".join(items) + ". Refused with the "
                                         "fix (their meaning differs): " + ", ".join(refused) + ". docs/cli.md has "
                                         "the table.", **wrap)
    elif name in ("pipeline", "demo"):
        sections = "sft., rm., ppo. and dpo." if name == "pipeline" else "sft., rm. and ppo."
        text += "\n" + textwrap.fill(f"The {sections} sections take the TRL / Trainer names of their stage "
                                      "(`tether sft --help`, docs/cli.md).", **wrap)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version(),
                        help="print the version (and those of python, torch, transformers) and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (cls, summary) in _config_classes().items():
        doc = " ".join((cls.__doc__ if name != "doctor" and cls.__doc__ else summary).split())
        p = sub.add_parser(
            name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
            description=f"{doc}\n\nOptions, given in the YAML file, as KEY=VALUE or as --KEY VALUE (nested keys "
                        f"with dots; booleans also as --KEY / --no-KEY):\n{_options_help(name, cls)}",
            epilog=f"example: {PROG} {name} {_example(name)}",
        )
        p.add_argument("--config", metavar="FILE", help="YAML file of options (overrides on the command line win)")
        p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
        if name == "demo":
            p.add_argument("--quick", action="store_true", help="smoke-size run of a few minutes (quick=true)")
        if name == "compare":
            p.add_argument("--quick", action="store_true", help="2 seeds × 5 updates, small evaluations (quick=true)")
        if name in RESUMABLE:
            _add_resume_flags(p)
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="option overrides, values parsed as YAML (or --KEY VALUE)")
    p = sub.add_parser("report", help="HTML report of one or more runs (several runs overlay their curves)",
                       description="Write one self-contained HTML file (interactive plots, their script embedded, "
                       "nothing fetched) from run directories: a stage's output_dir (metrics.jsonl, samples.jsonl, "
                       "...) or a pipeline/demo directory.",
                       epilog=f"example: {PROG} report runs/demo runs/other --out compare.html")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to report on")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default: RUN_DIR/report.html of the first)")
    p.add_argument("--png", metavar="FILE", help="also save the main plots as one PNG image (needs matplotlib)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


RESUMABLE = {"sft": ("",), "rm": ("",), "dpo": ("",), "ppo": ("",), "pipeline": ("sft.", "rm.", "dpo.", "ppo."),
             "demo": ("sft.", "rm.", "ppo.")}
"""Commands that checkpoint and resume (docs/reliability.md), with the config prefixes ``--resume`` sets."""


def _add_resume_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", metavar="WHERE", help="auto (default): continue from the newest checkpoint in "
                   "output_dir; or a checkpoint directory (resume=WHERE)")
    g.add_argument("--no-resume", action="store_true", help="start over; refuses an output_dir that already holds a "
                   "run (resume=never)")


def _resume_overrides(args: argparse.Namespace) -> list[str]:
    """``--resume X`` / ``--no-resume`` as ``resume=`` overrides (per stage for the pipeline and the demo)."""
    value = "never" if getattr(args, "no_resume", False) else getattr(args, "resume", None)
    if value is None:
        return []
    prefixes = RESUMABLE[args.command]
    if value not in ("auto", "never") and len(prefixes) > 1:
        raise UsageError(f"--resume {value}: {args.command} runs several stages; give a stage's checkpoint as "
                         f"{prefixes[-1]}resume=DIR")
    return [f"{p}resume={value}" for p in prefixes]


def _example(name: str) -> str:
    return {
        "sft": "--config configs/sft_example.yaml model=DIR max_steps=50",
        "rm": "--config configs/rm_example.yaml model=DIR num_epochs=2",
        "dpo": "model=runs/sft train_file=pairs.jsonl beta=0.1 loss_type=ipo",
        "ppo": "--config configs/ppo_example.yaml policy=runs/sft kl_coef=0.1",
        "pipeline": "--config FILE sft.model=DIR rm.model=DIR ppo.kl_coef=0.05   (or: method=dpo "
                    "dpo.train_file=pairs.jsonl)",
        "eval": "policies='{sft: runs/demo/sft, ppo: runs/demo/ppo/final}' reference=runs/demo/sft "
                "prompts=runs/demo/data/prompts_eval.jsonl reward_model=runs/demo/rm",
        "demo": "--quick   (or: --config configs/demo.yaml ppo.kl_coef=0.05)",
        "doctor": "--config configs/ppo_example.yaml policy=runs/sft",
        "compare": "task=demo --quick   (or: sft=DIR reward_model=DIR prompts=FILE eval_prompts=FILE "
                   "methods='[ppo, rloo]' seeds='[0, 1]')",
    }[name]


def parse_config(command: str, config: Optional[str], overrides: list[str]):
    """The validated config of ``command`` from an optional YAML file and ``KEY=VALUE`` overrides (TRL names
    resolved, ``tether.config.aliases``)."""
    from tether.config.aliases import load_user_config
    from tether.errors import ConfigError

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. kl_coef=0.1) or --KEY VALUE")
    cls = _config_classes()[command][0]
    return load_user_config(cls, config, overrides)


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """argparse for the command's own flags; every other ``--name`` of a config command is a config option turned
    into a ``KEY=VALUE`` override (``tether.config.flags.split_flags``), kept in the order typed."""
    from tether.config.aliases import extra_options
    from tether.config.flags import split_flags

    at = next((i for i, t in enumerate(argv) if not t.startswith("-")), None)
    classes = _config_classes()
    if at is None or argv[at] not in classes:
        return parser.parse_args(argv)
    command = argv[at]
    flags, overrides = split_flags(classes[command][0], argv[at + 1:], command_flags(command), command,
                                   extra_options)
    args = parser.parse_args([*argv[: at + 1], *flags])
    args.overrides = [*args.overrides, *overrides]
    return args


def command_overrides(args: argparse.Namespace) -> list[str]:
    """Every ``KEY=VALUE`` override of a parsed config command: those typed, then ``--quick`` and ``--resume``."""
    overrides = list(args.overrides)
    if getattr(args, "quick", False):
        overrides.append("quick=true")
    return overrides + _resume_overrides(args)


def _cwd_on_path() -> Optional[str]:
    """Put the current directory first on ``sys.path`` as ``python -m tether`` does (the ``tether`` console script
    puts its own bin directory there instead), so ``reward_fn=my_rewards:score`` finds ``./my_rewards.py`` either way.
    Returns the entry added (removed again when the command ends), or None when it was there already."""
    cwd = os.getcwd()
    if any(p in ("", ".") or (p and os.path.abspath(p) == cwd) for p in sys.path):
        return None
    sys.path.insert(0, cwd)
    return cwd


def _quiet_libraries() -> None:
    """transformers' progress bars and info logs only on a terminal: stderr stays one line per error otherwise."""
    import os

    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``tether`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    added = _cwd_on_path()
    try:
        parser = build_parser()
        args = parse_args(parser, argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "report":
            return _run_report(args)
        cfg = parse_config(args.command, args.config, command_overrides(args))
        _quiet_libraries()
        return RUNNERS[args.command](cfg)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Preempted as err:  # a checkpoint was written; the message says how to resume
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
    except (ValueError, OSError, ImportError) as err:
        if debug:
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return getattr(err, "exit_code", 2 if isinstance(err, ValueError) else 1)
    except Exception as err:  # a bug or an unforeseen failure: still one line unless --debug
        if debug:
            raise
        msg = " ".join(str(err).split())[:300] or "no message"
        print(f"{PROG}: error: unexpected {type(err).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        if added is not None and added in sys.path:
            sys.path.remove(added)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
