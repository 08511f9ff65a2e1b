from agoranet.cli.main import main

# Guarded: a child process started with "spawn" (vLLM's engine core) imports this module
# again as __mp_main__, and must not start a second command.
if __name__ == "__main__":
    main()
