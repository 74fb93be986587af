from flag_bench.cli import main

main()
