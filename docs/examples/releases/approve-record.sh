#!/bin/sh
# Helm and kustomize, step 2 (each approver, with their own key and credentials): review
# every ChangeApproval of the record (statement, diff, checks) and sign them all at once.
# Drop --yes to confirm interactively.
# Needs: RECORD NS KEY; KUBECONFIG of the approver.
set -eu
changegate approve --record "$RECORD" -n "$NS" --key "$KEY" --yes
