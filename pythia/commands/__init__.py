"""The commands of `python -m pythia`, one module each, with the pieces they share.

Each command module has NAME, SUMMARY, DESCRIPTION, EPILOG, `add_arguments(p)` (its flags on an
argparse parser) and `run(args) -> int` (the exit status); pythia.cli builds the parser from them
and dispatches. Commands check settings before any data is read, never replace a file the user
already has unless asked to, and raise PythiaError for anything the user can fix.

    train_chat, train        training_settings (flags -> settings, pure) -> training_run (build, run, report)
    chat, generate, explain  model_source (--checkpoint | --gpt2), sampling_flags
    convert_gpt2, export, prepare, tokenize, plot
    types                    argparse value types; kernel_choice: --kernels and PYTHIA_KERNELS
"""
