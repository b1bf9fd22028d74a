from freshrec.cli import main

main()
