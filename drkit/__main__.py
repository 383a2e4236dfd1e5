from drkit.cli.main import main

main()
