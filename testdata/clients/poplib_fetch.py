#!/usr/bin/env python3
"""Fetch every message from a POP3 server with Python's poplib, leave it there.

    poplib_fetch.py [options] HOST PORT USER PASS OUTDIR

Writes OUTDIR/001.eml, 002.eml, ... (message N of the session), each made
of the lines poplib returns joined with CRLF plus a final CRLF, so a file is
byte for byte what RETR sent (dot-unstuffed, without the terminating dot).
Also writes OUTDIR/list.txt ("N size" from LIST), OUTDIR/uidl.txt
("N uidl" from UIDL) and OUTDIR/octets.txt ("N octets" that poplib counted
while reading RETR, after un-stuffing, CRLFs included).

Options:
  --delete N[,N...]  send DELE for these message numbers before QUIT
  --seen FILE        UIDL tracking, as a mail fetcher does it: skip the
                     messages whose UIDL is listed in FILE (one per line),
                     and after a successful QUIT add the UIDLs fetched now.
                     Only the new messages are written (still named by
                     their message number in this session).
  --delete-fetched   send DELE for every message fetched in this run
  --stls CAFILE      STLS after the greeting, verify the server with CAFILE
  --ssl CAFILE       implicit TLS (pop3s), verify the server with CAFILE
  --maxline N        longest line poplib accepts (stock poplib: 2048, it
                     raises "line too long" beyond). Default here: 1 MiB.
  --no-quit          close the connection without QUIT (nothing is deleted)
  --timeout S        socket timeout in seconds (default 30)

Exit status: 0 on success, 1 on any POP3 or socket error (printed on stderr).
"""
import argparse
import os
import poplib
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("password")
    ap.add_argument("outdir")
    ap.add_argument("--delete", default="")
    ap.add_argument("--seen", metavar="FILE")
    ap.add_argument("--delete-fetched", action="store_true")
    ap.add_argument("--stls", metavar="CAFILE")
    ap.add_argument("--ssl", metavar="CAFILE")
    ap.add_argument("--maxline", type=int, default=1 << 20)
    ap.add_argument("--no-quit", action="store_true")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()

    poplib._MAXLINE = a.maxline
    os.makedirs(a.outdir, exist_ok=True)
    try:
        if a.ssl:
            ctx = ssl.create_default_context(cafile=a.ssl)
            p = poplib.POP3_SSL(a.host, a.port, timeout=a.timeout, context=ctx)
        else:
            p = poplib.POP3(a.host, a.port, timeout=a.timeout)
        if a.stls:
            p.stls(ssl.create_default_context(cafile=a.stls))
        p.user(a.user)
        p.pass_(a.password)

        seen = set()
        if a.seen and os.path.exists(a.seen):
            with open(a.seen) as f:
                seen = set(f.read().split())

        _, listing, _ = p.list()
        sizes = [l.decode().split() for l in listing]
        _, uidls, _ = p.uidl()
        uidl_of = dict(l.decode().split() for l in uidls)
        fetched = []
        with open(os.path.join(a.outdir, "list.txt"), "w") as f:
            f.writelines(f"{n} {s}\n" for n, s in sizes)
        with open(os.path.join(a.outdir, "uidl.txt"), "w") as f:
            f.writelines(l.decode() + "\n" for l in uidls)

        with open(os.path.join(a.outdir, "octets.txt"), "w") as oct_f:
            for n, _ in sizes:
                if uidl_of[n] in seen:
                    continue
                _, lines, octets = p.retr(int(n))
                fetched.append(n)
                data = b"".join(l + b"\r\n" for l in lines)
                with open(os.path.join(a.outdir, "%03d.eml" % int(n)), "wb") as f:
                    f.write(data)
                oct_f.write(f"{n} {octets}\n")

        for n in filter(None, a.delete.split(",")):
            p.dele(int(n))
        if a.delete_fetched:
            for n in fetched:
                p.dele(int(n))
        if a.no_quit:
            p.close()
        else:
            p.quit()
            if a.seen:
                with open(a.seen, "a") as f:
                    f.writelines(uidl_of[n] + "\n" for n in fetched)
    except (poplib.error_proto, OSError) as e:
        print(f"poplib_fetch: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
