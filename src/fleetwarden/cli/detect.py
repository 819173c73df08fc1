"""``fleetwarden detect``: measure detection quality, check rule files (C9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from fleetwarden.cli._common import JsonFlag, console, print_json
from fleetwarden.errors import ValidationError

app = typer.Typer(help="Anomaly detection (control C9).", no_args_is_help=True)


@app.command()
def evaluate(
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1,2,3",
    devices: Annotated[int, typer.Option(min=10, max=100_000)] = 300,
    days: Annotated[int, typer.Option(min=3, max=120)] = 14,
    learning_days: Annotated[int, typer.Option(min=1, max=60)] = 7,
    instances: Annotated[int, typer.Option(min=1, max=1000, help="Per scenario.")] = 15,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="Override a scenario range, e.g. drip_factor=1.2,3 or stuffing_failures=5,50."
        ),
    ] = None,
    multivariate: Annotated[bool, typer.Option(help="HalfSpaceTrees second opinion.")] = True,
    json_out: bool = JsonFlag,
) -> None:
    """Run the seeded simulated fleet with labelled attacks; print quality per scenario."""
    from dataclasses import fields

    from fleetwarden.detect.simulate import FleetParams, ScenarioParams, evaluate

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError as exc:
        raise ValidationError("--seeds must be integers separated by commas") from exc
    if learning_days >= days - 1:
        raise ValidationError("--learning-days must leave at least two days to evaluate")
    scen = ScenarioParams()
    known = {f.name: f for f in fields(ScenarioParams)}
    for p in param or []:
        name, _, val = p.partition("=")
        if name not in known:
            raise ValidationError(f"unknown scenario parameter {name!r}; known: {', '.join(known)}")
        try:
            nums = [float(x) for x in val.split(",")]
        except ValueError as exc:
            raise ValidationError(f"{name}: values must be numbers") from exc
        current = getattr(scen, name)
        if isinstance(current, tuple):
            if len(nums) != 2 or nums[0] > nums[1]:
                raise ValidationError(f"{name} needs a range low,high")
            cast = int if isinstance(current[0], int) else float
            setattr(scen, name, (cast(nums[0]), cast(nums[1])))
        else:
            setattr(scen, name, nums[0])
    fleet = FleetParams(
        devices=devices, days=days, learning_days=learning_days, instances=instances
    )
    with Progress(console=console, transient=True, disable=json_out) as bar:
        task = bar.add_task("simulating", total=1)

        def step(done: int, total: int) -> None:
            if done % 12 == 0 or done == total:
                bar.update(task, completed=done, total=total)

        ev = evaluate(seed_list, fleet, scen, multivariate=multivariate, progress=step)
    if json_out:
        print_json(ev.to_dict())
    else:
        console.print(ev.table())
    if not ev.meets_targets():
        raise typer.Exit(1)


@app.command("check-rules")
def check_rules(path: Path, json_out: bool = JsonFlag) -> None:
    """Validate a rules file (TOML or YAML) and print the rules it declares."""
    from fleetwarden.detect.rules import load_rules

    rules = load_rules(path)
    if json_out:
        print_json(rules)
        return
    for r in rules:
        console.print(f"{r.name}: {json.dumps(r.model_dump(mode='json', exclude_none=True))}")
