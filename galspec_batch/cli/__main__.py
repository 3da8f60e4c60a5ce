from galspec_batch.cli import main

main()
