"""``haagent sim scenario NAME`` and ``haagent sim random --seed N``: run the simulator from a shell."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import click

from haagent.clikit import fail


@click.command("scenario")
@click.argument("names", nargs=-1)
@click.option("--update", is_flag=True, help="Rewrite log.expect with this run's log (review the diff!).")
@click.option("--all", "run_all", is_flag=True, help="Run every scenario of the corpus.")
@click.option("--list", "list_only", is_flag=True, help="List the corpus and each README line.")
@click.option("--show", is_flag=True, help="Print the run's log instead of diffing it.")
def scenario(names: tuple[str, ...], update: bool, run_all: bool, list_only: bool, show: bool) -> None:
    """Run failover scenarios (haagent/sim/scenarios/NAME, shipped with the package) and diff each log with its golden."""
    from haagent.sim.scenario import CORPUS, ScenarioError, corpus, locate, run_dir

    if list_only:
        for name in corpus():
            readme = CORPUS / name / "README"
            click.echo(f"{name:<36} {readme.read_text().strip() if readme.exists() else ''}")
        return
    todo = corpus() if run_all else list(names)
    if not todo:
        fail("name a scenario (or --all, --list)", 2)
    failed = 0
    for name in todo:
        try:
            path = locate(name)
            out = run_dir(path)
        except ScenarioError as exc:
            fail(str(exc), 2)
            return
        golden = path / "log.expect"
        if out.violations:
            failed += 1
            click.echo(f"{name}: SAFETY INVARIANT VIOLATED: {'; '.join(out.violations)}", err=True)
        if show:
            click.echo(out.text, nl=False)
        elif update:
            old = golden.read_text() if golden.exists() else ""
            golden.write_text(out.text)
            click.echo(f"{name}: {'unchanged' if old == out.text else 'log.expect rewritten'}")
        else:
            want = golden.read_text() if golden.exists() else ""
            if want == out.text:
                click.echo(f"{name}: ok")
            else:
                failed += 1
                click.echo(f"{name}: log differs from {golden}", err=True)
                sys.stdout.writelines(difflib.unified_diff(want.splitlines(True), out.text.splitlines(True),
                                                           "log.expect", "this run"))
    if failed:
        sys.exit(1)


@click.command("random")
@click.option("--seed", type=int, default=None, help="Replay one schedule.")
@click.option("--seeds", default="0-999", show_default=True, help="A range of seeds to run: FIRST-LAST.")
@click.option("--log", "show_log", is_flag=True, help="Print the schedule and the run's log.")
@click.option("--save", type=click.Path(file_okay=False), help="Write the schedule as a scenario directory.")
def random_cmd(seed: int | None, seeds: str, show_log: bool, save: str | None) -> None:
    """Run seeded random fault schedules; invariants are checked after every tick."""
    from haagent.sim.schedules import generate, replay_command, run_seed

    if seed is not None:
        first = last = seed
    else:
        try:
            a, _, b = seeds.partition("-")
            first, last = int(a), int(b or a)
        except ValueError:
            fail(f"--seeds {seeds!r}: expected FIRST-LAST, e.g. 0-999", 2)
            return
    bad = []
    for s in range(first, last + 1):
        out = run_seed(s, log=show_log)
        if save:
            sched = generate(s)
            d = Path(save)
            d.mkdir(parents=True, exist_ok=True)
            (d / "cluster.json").write_text(json.dumps(sched.cluster, indent=2) + "\n")
            (d / "cmdlist").write_text(sched.cmdlist)
            (d / "README").write_text(f"Random fault schedule, seed {s}.\n")
        if show_log:
            click.echo(f"# seed {s}\n# cluster.json: {json.dumps(generate(s).cluster, sort_keys=True)}")
            click.echo("".join(f"# {ln}\n" for ln in generate(s).cmdlist.splitlines()), nl=False)
            click.echo(out.text, nl=False)
        if out.violations or out.problems:
            bad.append(s)
            why = "; ".join(out.violations or out.problems)
            click.echo(f"seed {s}: FAILED: {why}\n  replay: {replay_command(s)}", err=True)
    click.echo(f"{last - first + 1} schedule(s), seeds {first}-{last}: "
               f"{'all invariants held' if not bad else f'{len(bad)} failed: ' + ' '.join(map(str, bad))}")
    if bad:
        sys.exit(1)
