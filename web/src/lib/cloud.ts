// What the cloud view offers, from the link's status and the user's installation role (docs/cloud.md).

export interface CloudStatus {
  state: string;
  enabled?: boolean;
  claimed?: boolean;
  url?: string | null;
  last_error?: string | null;
  /** Only for installation owners and admins (null or absent for other roles). */
  chip_id?: string | null;
  claim_secret?: string | null;
  [key: string]: unknown;
}

export interface CloudActions {
  /** The chip id and claim secret came with the status (owners and admins). */
  showCredentials: boolean;
  /** Claiming turns the link on (or points it at another URL): owners only. */
  canClaim: boolean;
  claimLabel: string;
  /** Unclaiming makes sense once the link is on or claimed: owners only. */
  canUnclaim: boolean;
}

export function cloudActions(status: CloudStatus | null, isOwner: boolean): CloudActions {
  const showCredentials = !!status?.chip_id && !!status.claim_secret;
  if (!status) return { showCredentials, canClaim: false, claimLabel: "Claim", canUnclaim: false };
  const on = status.enabled === true || status.claimed === true;
  return {
    showCredentials,
    canClaim: isOwner,
    claimLabel: on ? "Claim again (new URL)" : "Claim",
    canUnclaim: isOwner && on,
  };
}
