from modelberth.cli import main

main()
