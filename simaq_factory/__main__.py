"""``python -m simaq_factory``: the ``simaq-factory`` command (for job scripts and workflow managers
that call tools through an interpreter). Spawned Dask workers re-import this file as ``__mp_main__``:
they run nothing."""

if __name__ == "__main__":
    from simaq_factory.cli.main import main

    main(prog_name="simaq-factory")
