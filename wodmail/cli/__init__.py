"""The `wodmail` command: one module per subcommand, registered in `wodmail.cli.dispatch`.

    wodmail [--location FILE] serve                  run the daemon (doors, worker, outbox)
    wodmail [--location FILE] deliver [-f SENDER]    take one mail on stdin (procmail / MTA pipe)
    wodmail [--location FILE] jobs [--state S]       counts, oldest waiting job, recent jobs
    wodmail [--location FILE] jobs show ID           one job: its command, steps, callbacks and copies
    wodmail [--location FILE] jobs show cN           one command dropped as a copy of a job
    wodmail [--location FILE] retry ID               run a failed or set-aside job again, or send
                                                     its set-aside callbacks again
    wodmail [--location FILE] refused [show ID]      mails refused at the doors, and why
    wodmail [--location FILE] prune [--job-days N]   forget old done jobs and refused mails now
    wodmail [--location FILE] outbox                 callbacks waiting for the registration app
    wodmail [--location FILE] relay [retry ID|all]   mails for people passed to RELAYHOST, or
                                                     waiting; send set-aside ones again
    wodmail [--location FILE] check                  load the location and its workshops, report
    wodmail [--location FILE] render WKSHP-Name --student N [--out DIR] [--password X]
                                                     render a workshop for one student, nothing else
    wodmail [--location FILE] workshops sync [--write FILE]
                                                     the registration app's workshops against ours
    wodmail [--location FILE] send VERB ARGS... --workshop NAME [--customer C] [--email A] [--print]
                                                     compose a command mail and submit it: through
                                                     the admin socket (root), else signed over SMTP
    wodmail [--location FILE] send VERB [CUSTOMER] --range MIN,MAX --workshop NAME
                                                     the same for students MIN..MAX, one by one
                                                     (RESET: the range), as wod-test-action.sh
    wodmail [--location FILE] help | status [job ID | student N | workshop NAME]
                                                     what HELP and STATUS answer by mail
    wodmail [--location FILE] drain | resume [workshop NAME | all]
                                                     refuse a workshop's CREATEs until resume

The location is FILE, else $WODMAIL_LOCATION, else the embedded locations/local.yaml.
Exit codes follow sysexits: 65 bad data, 75 try again later, 77 not permitted, 78 bad
configuration.

The package:

- `dispatch`: the parser (SUBCOMMANDS: every subcommand's `register`, in help order) and `main`;
- `common`: what several subcommands share (exit codes, opening the queue, times and origins);
- one module per subcommand or close group: `serve` (serve, jobs-process), `deliver`, `send`,
  `jobs` (jobs, jobs show, retry), `refused`, `prune`, `outbox`, `relay`, `check`, `render`,
  `workshops`, `desk` (help, status, drain, resume).

A new subcommand is a module with a `register(commands)` function that adds its parser and
sets its handler (`set_defaults(handler=...)`, a function of the location and the parsed
arguments that returns the exit code), and one line in `dispatch.SUBCOMMANDS`.
"""

from __future__ import annotations

from wodmail.cli.dispatch import build_parser, main

__all__ = ["build_parser", "main"]
