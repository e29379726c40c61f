#!/usr/bin/env python3
"""Run a block of the README exactly as written, in order.

usage: readme.py BLOCK DIR

BLOCK names the ```sh block that follows the line `<!-- ci: BLOCK -->` in
README.md (of the checkout this script is in); DIR is the folder to run it
in (a fresh clone). Each line is one command (a trailing backslash joins
lines), run by one bash, so that exports carry on. Besides running it:
  - a command ending in '&' is a long-running process: its output goes to
    a log, and the next command waits until the log says it is up ("Ctrl-C
    stops." for cohort dev, "joined cluster" for a unit);
  - a command with --follow runs for 3 seconds;
  - natscli's stream view runs on a pseudo-terminal (terminal.py), since it
    pages only there;
  - a comment '# → TEXT' after a command: its output must contain TEXT.
Every other command must exit 0. At the end, the background processes are
stopped.
"""
import os, re, shlex, subprocess, sys

block, workdir = sys.argv[1], sys.argv[2]
terminal = os.path.join(os.path.abspath(os.path.dirname(__file__)), "terminal.py")
readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
m = re.search(r"<!-- ci: %s -->\s*```sh\n(.*?)```" % re.escape(block), readme, re.S)
if not m:
    sys.exit(f"readme.py: no block '{block}' in README.md")
lines, cur = [], ""
for raw in m.group(1).splitlines():
    if raw.rstrip().endswith("\\"):
        cur += raw.rstrip()[:-1] + " "
        continue
    lines.append(cur + raw)
    cur = ""

script = ["set -euo pipefail", "bg=()",
          "stop() { for p in \"${bg[@]}\"; do kill -INT \"$p\" 2>/dev/null || true; done; wait 2>/dev/null || true; }",
          "trap stop EXIT",
          "up() { for _ in $(seq 600); do grep -q \"$2\" \"$1\" 2>/dev/null && return; sleep 0.1; done; cat \"$1\"; echo \"readme.py: not up: $3\"; exit 1; }"]
n = 0
for line in lines:
    cmd, expect = line, None
    if "# →" in line:
        cmd, expect = line.split("# →", 1)
        expect = expect.strip()
    # A comment outside quotes ends the command.
    cmd = re.sub(r"\s+#\s.*$", "", cmd) if not cmd.lstrip().startswith("#") else ""
    cmd = cmd.strip()
    if not cmd:
        continue
    n += 1
    script.append("echo " + shlex.quote("$ " + cmd))
    if cmd.endswith("&"):
        log = f".readme-{n}.log"
        marker = "Ctrl-C stops." if re.search(r"cohort dev( |$)", cmd) else "joined cluster"
        script.append(f"{cmd[:-1].strip()} >{log} 2>&1 &")
        script.append("bg+=($!)")
        script.append(f"up {log} {shlex.quote(marker)} {shlex.quote(cmd)}")
    elif " stream view " in cmd + " ":
        # natscli pages only on a terminal: the command runs on one.
        script.append(f"python3 {shlex.quote(terminal)} {shlex.quote(cmd)}")
    elif "--follow" in cmd:
        script.append(f"timeout 3 {cmd} || [ $? = 124 ]")
    elif expect:
        script.append(f"out=$({cmd})")
        script.append('printf "%s\\n" "$out"')
        script.append(f"case \"$out\" in *{shlex.quote(expect)}*) ;; *) echo {shlex.quote('readme.py: want ' + expect)}; exit 1 ;; esac")
    else:
        script.append(cmd)
script.append(f"echo 'readme.py: block {block}: {n} commands, each as written, succeeded'")
sys.exit(subprocess.call(["bash", "-c", "\n".join(script)], cwd=workdir))
