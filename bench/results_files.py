"""Where `make bench` writes: bench/results/<day>.md and its .raw runs, never over an earlier run's files."""
import json


def unused_path(results_dir, stem):
    """Return results_dir/<stem>.md, or <stem>-2.md, <stem>-3.md... the first no earlier run wrote: a second run on
    the same day (a short --only run after the full one, say) never overwrites the first one's results."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path, number = results_dir / f'{stem}.md', 1
    while path.exists():
        number += 1
        path = results_dir / f'{stem}-{number}.md'
    return path


def write(results_dir, day, markdown, raw_lines):
    """Write <day>.md (or the next unused name) and the raw runs as JSON lines beside it (.raw); return the .md path."""
    path = unused_path(results_dir, day)
    path.write_text(markdown)
    path.with_suffix('.raw').write_text(''.join(json.dumps(line) + '\n' for line in raw_lines))
    return path
