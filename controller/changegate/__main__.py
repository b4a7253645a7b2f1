from changegate.cli.main import main

main()
