from compresskit.cli.main import main

main()
