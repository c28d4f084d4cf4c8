"""A catalog of 20 workshops and 500 files: time to load it at start, and to render one student.

    .venv/bin/python bench/catalog.py [--workshops 20] [--files 500] [--students 200]
                                      [--dense] [--homes DIR]

Generates, in a temporary folder, a catalog shaped like the sites' (one WKSHP- folder per
workshop with its wod.yml; six notebooks of 30 cells, one cell in three using location,
student and variable-file values, every cell with --dense; scripts, YAML and env files;
pictures and data files in sub-folders), public and private variable files, and a location
pointing at it. Then measures, in this process:

- start: `load_location` (the location, every wod.yml, the variable files, the range
  checks); and compiling every served workshop's templates, which the daemon does lazily
  (the first CREATE of each workshop pays for its own) and `wodmail check` does for all:
  the first time, and after a restart, when the daemon finds them in STATEDIR/template-cache;
- one student: the template variables (variable files stat-checked) and `render_into`
  (every templated file rendered, every other file copied, the folder swapped in), for
  `--students` students spread over the workshops, wall and CPU time; then the templating
  alone, and the same files written again by a bare Python loop, which is the file
  system's share (--homes puts the homes elsewhere, e.g. /dev/shm, to see it vanish).

Figures are printed, never asserted (tests do not time things).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wodmail.catalog import template_variables
from wodmail.location import load_location
from wodmail.workshop import Renderer

MARKDOWN = (
    "## Step {step}: {title}\n"
    "Welcome student{{{{ STDID }}}} to {{{{ BRANDING }}}} ({{{{ MODE }}}}).\n"
    "Your lab runs at https://{{{{ JPHOSTEXT }}}}/user/student{{{{ STDID }}}}/lab.\n"
    "{{% if MODE == 'CHLG' %}}\nThis is the challenge.\n{{% endif %}}\n"
    "More at {{{{ BRANDINGURL }}}}: {filler}\n"
)
CODE = (
    "export LAB_HOST={{{{ hostvars[inventory_hostname]['IP-{name}'] }}}}\n"
    "curl -u student{{{{ STDID }}}}:{{{{ PASSSTU }}}} https://{{{{ APIHOST }}}}/api/v1/items/{step}\n"
    "docker ps --format {{% raw %}}'{{{{ .Names }}}}'{{% endraw %}}  # {filler}\n"
)
PLAIN = "## Step {step}: {title}\nRead the documentation, then run the cell below.\n{filler}\n{filler}\n"
FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 3


def notebook(name: str, number: int, cells: int, dense: bool) -> str:
    """A notebook of `cells` cells: one in three templated (every one when `dense`)."""
    items = []
    for step in range(cells):
        kind = "markdown" if step % 2 == 0 else "code"
        templated = dense or step % 3 == 0
        text = ((MARKDOWN if kind == "markdown" else CODE) if templated else PLAIN).format(
            step=step, title=f"part {number}.{step}", filler=FILLER, name=name
        )
        lines = text.split("\n")
        source = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        cell: dict[str, object] = {"cell_type": kind, "metadata": {}, "source": source}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        items.append(cell)
    document = {
        "cells": items,
        "metadata": {"kernelspec": {"display_name": "Bash", "language": "bash", "name": "bash"}},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    return json.dumps(document, indent=1) + "\n"


def png(seed: int, size: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = os.urandom(size)  # incompressible, like a real picture
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def make_catalog(root: Path, workshops: int, files: int, dense: bool = False, homes: Path | None = None) -> Path:
    """The catalog, variable folders and location; returns the location file."""
    notebooks = root / "notebooks"
    public, private = root / "vars", root / "vars-private"
    for folder in (notebooks, public, private):
        folder.mkdir(parents=True)
    per_workshop = files // workshops
    for index in range(workshops):
        name = f"WKSHP-Bench{index:02d}"
        folder = notebooks / name
        for sub in ("Pictures", "data", "lab/app", "lab/env"):
            (folder / sub).mkdir(parents=True)
        first = index * 20 + 1
        (folder / "wod.yml").write_text(
            f"%YAML 1.1\n---\nname: 'Bench workshop {index}'\ndescription: 'Generated for the benchmark.'\n"
            f"active: true\ncapacity: 20\npriority: 1\nrange: [{first}, {first + 19}]\nreset: false\n"
            f"ldap: false\nvarpass: true\ncompile: false\ncategory: ['Open Source']\nduration: 4\n"
        )
        written = 1
        for number in range(6):  # notebooks of 30 cells (about 25 kB each)
            (folder / f"{number}-WKSHP-Part{number}.ipynb").write_text(notebook(name, number, 30, dense))
            written += 1
        templated = {
            "lab/setup.sh": "#!/bin/bash\nexport LAB_USER=student{{ STDID }}\necho {{ WORKSHOP }}\n",
            "lab/app/config.yaml": "student: student{{ STDID }}\napi: {{ APIHOST }}\ntoken: {{ TOKEN }}\n",
            "lab/app/main.py": 'STUDENT = "student{{ STDID }}"\nHOST = "{{ APIHOST }}"\n',
            "lab/env/lab.env": "STUDENT_ID={{ STDID }}\nPORTAL={{ BRANDINGURL }}\n",
        }
        for relative, text in templated.items():
            (folder / relative).write_text(text)
            written += 1
        number = 0
        while written < per_workshop:  # the rest: pictures and data files, copied as they are
            if number % 2 == 0:
                (folder / "Pictures" / f"figure{number}.png").write_bytes(png(number, 20_000))
            else:
                (folder / "data" / f"dataset{number}.csv").write_text("id,value\n" + "1,2\n" * 500)
            written += 1
            number += 1
        (public / f"variables_{name}.yml").write_text(
            f"APIHOST: api{index}.example.com\nTOKEN: public\nHOSTS:\n"
            + "".join(f"  {s}: 192.0.2.{s % 250}\n" for s in range(first, first + 20))
        )
        (private / f"variables_{name}.yml").write_text("TOKEN: private-token\n")
    location = root / "site.yaml"
    location.write_text(
        f"STATEDIR: {root / 'state'}\nSTUDENTDIR: {homes or root / 'students'}\nWORKSHOPDIR: {notebooks}\n"
        f"VARDIR: {public}\nVARPRIVDIR: {private}\nSTUDENTMAX: {workshops * 20}\n"
        "BRANDING: Bench WoD\nBRANDINGURL: https://wod.example.com\nJPHOSTEXT: nb.example.com\n"
        + "".join(f"IP-WKSHP-Bench{i:02d}: 192.0.2.{i + 1}\n" for i in range(workshops))
    )
    return location


def write_bare(source: Path, target: Path) -> float:
    """Seconds to write `source`'s files again under `target` with a bare loop (no wodmail)."""
    files = [(p.relative_to(source), p.read_bytes()) for p in sorted(source.rglob("*")) if p.is_file()]
    started = time.perf_counter()
    for relative, data in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target / relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workshops", type=int, default=20)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--dense", action="store_true", help="template every cell (default: one in three)")
    parser.add_argument("--homes", type=Path, help="the folder for the student homes (default: beside the catalog)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="wodmail-bench-catalog-"))
    homes = Path(tempfile.mkdtemp(prefix="wodmail-bench-homes-", dir=args.homes)) if args.homes else None
    try:
        location_file = make_catalog(root, args.workshops, args.files, args.dense, homes)
        if homes is None:
            (root / "students").mkdir()
        files = sum(1 for p in (root / "notebooks").rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in (root / "notebooks").rglob("*") if p.is_file())
        print(f"catalog: {args.workshops} workshops, {files} files, {size / 1e6:.1f} MB in {root / 'notebooks'}")

        started, cpu = time.perf_counter(), time.process_time()
        location = load_location(location_file)
        load_wall, load_cpu = time.perf_counter() - started, time.process_time() - cpu
        cache = location.state_dir / "template-cache"  # as the daemon keeps it
        renderer = Renderer(optional_variables=location.optional_variables, code_cache=cache)
        started, cpu = time.perf_counter(), time.process_time()
        compiled = {name: renderer.workshop(w.content) for name, w in location.workshops.items()}
        compile_wall, compile_cpu = time.perf_counter() - started, time.process_time() - cpu
        renderer = Renderer(optional_variables=location.optional_variables, code_cache=cache)  # a restart
        started, cpu = time.perf_counter(), time.process_time()
        for workshop in location.workshops.values():
            renderer.workshop(workshop.content)
        cached_wall, cached_cpu = time.perf_counter() - started, time.process_time() - cpu
        templated = sum(len(c.templates) for c in compiled.values())
        print(
            f"start: load_location {load_wall * 1000:.1f} ms ({load_cpu * 1000:.1f} ms CPU), "
            f"{len(location.workshops)} workshops served, {len(location.warnings)} warnings"
        )
        print(
            f"start: compile every workshop ({templated} templates) {compile_wall * 1000:.1f} ms "
            f"({compile_cpu * 1000:.1f} ms CPU) the first time; {cached_wall * 1000:.1f} ms "
            f"({cached_cpu * 1000:.1f} ms CPU) after a restart (STATEDIR/template-cache)"
        )
        print(
            f"start: load and compile everything {(load_wall + compile_wall) * 1000:.1f} ms the first time, "
            f"{(load_wall + cached_wall) * 1000:.1f} ms after a restart"
        )

        walls: list[float] = []
        cpus: list[float] = []
        bare: list[float] = []  # the same files written by a bare loop, right after each render
        workshops = list(location.workshops.values())
        for index in range(args.students):
            workshop = workshops[index % len(workshops)]
            stdid = workshop.first + (index // len(workshops)) % (workshop.last - workshop.first + 1)
            home = location.student_home(stdid)
            home.mkdir(exist_ok=True)
            started, cpu = time.perf_counter(), time.process_time()
            variables = template_variables(location, workshop, stdid, "Bench-Password-1", customer="1")
            written = renderer.workshop(workshop.content).render_into(home / workshop.content_name, variables)
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - cpu)
            bare.append(write_bare(home / workshop.content_name, location.student_dir / f"bare{index}"))
        renders: list[float] = []
        for index in range(args.students):  # the templating alone, nothing written
            workshop = workshops[index % len(workshops)]
            variables = template_variables(location, workshop, workshop.first, "Bench-Password-1", customer="1")
            started = time.perf_counter()
            renderer.workshop(workshop.content).render(variables)
            renders.append(time.perf_counter() - started)
        walls.sort()
        cpus.sort()
        p95 = walls[int(len(walls) * 0.95) - 1]
        print(
            f"one student ({written} files, {args.students} renders): median {statistics.median(walls) * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms, max {walls[-1] * 1000:.1f} ms wall; "
            f"median {statistics.median(cpus) * 1000:.1f} ms CPU"
        )
        print(f"  templating alone (render, nothing written): median {statistics.median(renders) * 1000:.1f} ms")
        print(
            f"  the same files written by a bare loop (the file system's share): median "
            f"{statistics.median(bare) * 1000:.1f} ms"
        )
        print(f"homes in {location.student_dir}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if homes is not None:
            shutil.rmtree(homes, ignore_errors=True)


if __name__ == "__main__":
    main()
