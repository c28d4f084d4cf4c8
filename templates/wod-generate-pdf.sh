#!/bin/sh
# wod-generate-pdf.sh: make a PDF of every notebook of this workshop, beside each notebook.
# Run it from the workshop's folder; wodmail puts it there when the location's COPYSTEPS
# names `pdfscript` (the file is the location's PDFSCRIPT, this one by default).
set -e
exec jupyter nbconvert --to pdf *.ipynb
