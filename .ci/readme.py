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
  - a comment '# → TEXT' after a command: its output must contain TEXT;
  - a comment '# ✗ TEXT': the command must fail, its output (standard
    output and error) containing TEXT;
  - a here-document (a line with <<EOF, up to the line EOF) is part of its
    command.
A background process is up when its log says so: "Ctrl-C stops." for
cohort dev, "Server is ready" for nats-server, "waiting for recovery" for
an issuer started with --recover, "issuer serving" for other issuers,
"joined cluster" for a unit of a cluster, "unit serving HTTPS" for one of
none. Every other command must exit 0. At the end,
the background processes are stopped.
"""
import os, re, shlex, subprocess, sys

block, workdir = sys.argv[1], sys.argv[2]
terminal = os.path.join(os.path.abspath(os.path.dirname(__file__)), "terminal.py")
readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
m = re.search(r"<!-- ci: %s -->\s*```sh\n(.*?)```" % re.escape(block), readme, re.S)
if not m:
    sys.exit(f"readme.py: no block '{block}' in README.md")
lines, cur, heredoc = [], "", None
for raw in m.group(1).splitlines():
    if heredoc is not None:
        cur += "\n" + raw
        if raw == heredoc:
            lines.append(cur)
            cur, heredoc = "", None
        continue
    if raw.rstrip().endswith("\\"):
        cur += raw.rstrip()[:-1] + " "
        continue
    h = re.search(r"<<-?'?(\w+)'?", raw)
    if h:
        cur, heredoc = cur + raw, h.group(1)
        continue
    lines.append(cur + raw)
    cur = ""
if heredoc is not None:
    sys.exit(f"readme.py: block {block}: a here-document without its {heredoc} line")

script = ["set -euo pipefail", "bg=()",
          "stop() { for p in \"${bg[@]}\"; do kill -INT \"$p\" 2>/dev/null || true; done; wait 2>/dev/null || true; }",
          "trap stop EXIT",
          "up() { for _ in $(seq 600); do grep -q \"$2\" \"$1\" 2>/dev/null && return; sleep 0.1; done; cat \"$1\"; echo \"readme.py: not up: $3\"; exit 1; }"]
n = 0
for line in lines:
    cmd, expect, fails = line, None, False
    first = line.split("\n", 1)[0]
    if "# →" in first:
        cmd, expect = line.split("# →", 1)
        expect = expect.strip()
    elif "# ✗" in first:
        cmd, expect = line.split("# ✗", 1)
        expect, fails = expect.strip(), True
    # A comment outside quotes ends the command.
    cmd = re.sub(r"\s+#\s.*$", "", cmd) if not cmd.lstrip().startswith("#") else ""
    cmd = cmd.strip()
    if not cmd:
        continue
    n += 1
    script.append("echo " + shlex.quote("$ " + cmd))
    if cmd.endswith("&"):
        log = f".readme-{n}.log"
        marker = "joined cluster"
        if re.search(r"cohort\S* dev( |$)", cmd):
            marker = "Ctrl-C stops."
        elif cmd.startswith("nats-server"):
            marker = "Server is ready"
        elif re.search(r"cohort\S* issuer .*--recover", cmd):
            marker = "waiting for recovery"
        elif re.search(r"cohort\S* issuer ", cmd):
            marker = "issuer serving"
        elif re.search(r"cohort\S* unit ", cmd) and "--cluster" not in cmd and "--creds" not in cmd:
            marker = "unit serving HTTPS"  # a unit of no cluster joins none
        script.append(f"{cmd[:-1].strip()} >{log} 2>&1 &")
        script.append("bg+=($!)")
        script.append(f"up {log} {shlex.quote(marker)} {shlex.quote(cmd)}")
    elif " stream view " in cmd + " ":
        # natscli pages only on a terminal: the command runs on one.
        script.append(f"python3 {shlex.quote(terminal)} {shlex.quote(cmd)}")
    elif "--follow" in cmd:
        script.append(f"timeout 3 {cmd} || [ $? = 124 ]")
    elif fails:
        script.append(f"if out=$({cmd} 2>&1); then printf '%s\\n' \"$out\"; echo {shlex.quote('readme.py: succeeded, want a failure: ' + cmd)}; exit 1; fi")
        script.append('printf "%s\\n" "$out"')
        script.append(f"case \"$out\" in *{shlex.quote(expect)}*) ;; *) echo {shlex.quote('readme.py: want ' + expect)}; exit 1 ;; esac")
    elif expect:
        script.append(f"out=$({cmd})")
        script.append('printf "%s\\n" "$out"')
        script.append(f"case \"$out\" in *{shlex.quote(expect)}*) ;; *) echo {shlex.quote('readme.py: want ' + expect)}; exit 1 ;; esac")
    else:
        script.append(cmd)
script.append(f"echo 'readme.py: block {block}: {n} commands, each as written, succeeded'")
sys.exit(subprocess.call(["bash", "-c", "\n".join(script)], cwd=workdir))
