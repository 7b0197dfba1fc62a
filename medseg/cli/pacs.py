"""``medseg pacs``: look at a DICOMweb server, and put the demo cohort on one.

* ``medseg pacs ls URL``: the studies of a server, or the series of a study (no patient fields);
* ``medseg pacs demo URL [DIRECTORY]``: the demo phantoms as DICOM + SEG, stored on the server,
  with the manifests ``demo-dicom.json`` (files) and ``demo-pacs.json`` (DICOMweb addresses);
* ``medseg pacs serve --storage DIR``: a local Orthanc with DICOMweb until Ctrl-C (its user and
  password, when set, are ``MEDSEG_DICOMWEB_USER`` / ``MEDSEG_DICOMWEB_PASSWORD``).

Credentials come from the environment (``MEDSEG_DICOMWEB_USER`` / ``MEDSEG_DICOMWEB_PASSWORD``,
``MEDSEG_DICOMWEB_TOKEN`` or ``MEDSEG_DICOMWEB_CREDENTIALS``), never from the command line.
"""

from __future__ import annotations

import argparse

from medseg.cli import values


def add_pacs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="list studies and series on a DICOMweb server (PACS); store the demo cohort on one")
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="the studies of a server, or the series of one study")
    ls.add_argument("url", help="dicomweb://host:port/dicom-web, or .../studies/<StudyInstanceUID>")
    ls.set_defaults(run=_run_ls)
    demo = actions.add_parser("demo", help="store the demo phantoms (DICOM + SEG) on a server, write their manifests")
    demo.add_argument("url", type=values.dicomweb_server, help="the server, e.g. dicomweb://127.0.0.1:8043/dicom-web")
    demo.add_argument("directory", nargs="?", default="data_manifests",
                      help="where files and manifests go (default: data_manifests)")
    demo.add_argument("--cases", type=values.positive_int, default=8,
                      help="number of phantom cases (default 8; the last half are test)")
    demo.set_defaults(run=_run_demo)
    serve = actions.add_parser("serve", help="run a local Orthanc with DICOMweb on 127.0.0.1 until Ctrl-C")
    serve.add_argument("--storage", required=True, help="where it keeps its database and files (kept after it stops)")
    serve.add_argument("--port", type=values.positive_int, default=8043,
                       help="its HTTP port (default 8043; 8042 is taken where Debian's orthanc service runs)")
    serve.set_defaults(run=_run_serve)


def _run_ls(args: argparse.Namespace) -> None:
    from medseg.io.dicomweb import DicomwebServer, parse_dicomweb_url

    ref = parse_dicomweb_url(args.url)
    server = DicomwebServer(ref)
    if ref.study is None:
        for study in server.studies():
            count = "?" if study.n_series is None else study.n_series
            print(f"{study.ref}  {'/'.join(study.modalities) or '?'}  {count} series  {study.description!r}")
        return
    for series in server.series(ref.study):
        print(series)


def _run_demo(args: argparse.Namespace) -> None:
    from medseg.errors import ConfigError
    from medseg.pacs_demo import write_pacs_demo

    if args.cases < 2:
        raise ConfigError(f"--cases must be at least 2 (one train, one test case), got {args.cases}")
    files, pacs = write_pacs_demo(args.directory, args.url, n_cases=args.cases)
    print(f"demo cohort as DICOM files: {files}")
    print(f"demo cohort on {args.url}: {pacs}")


def _run_serve(args: argparse.Namespace) -> None:
    from medseg.io.dicomweb import credentials_from_env
    from medseg.io.dicomweb.orthanc import LocalOrthanc

    credentials = credentials_from_env()
    users = {credentials.user: credentials.password} if credentials.user is not None else {}
    with LocalOrthanc(args.storage, port=args.port, users=users) as pacs:
        print(f"Orthanc serving {pacs.url} ({'user ' + repr(credentials.user) if users else 'no authentication'}); "
              "Ctrl-C stops it", flush=True)
        pacs.process.wait()
