from broadcaster.entry import main

main()
