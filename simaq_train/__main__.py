"""``python -m simaq_train``: the ``simaq-train`` command (also under ``torchrun -m simaq_train``).
Re-imported as ``__mp_main__`` by spawned loader workers: runs nothing there."""

if __name__ == "__main__":
    from simaq_train.cli import main

    main()
