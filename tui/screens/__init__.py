"""One Screen per file; dialogs are ModalScreens that return through dismiss()."""
