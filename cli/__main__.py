from discretae.cli.app import main

main()
