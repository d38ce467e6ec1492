"""placeholder"""
def add_report_parser(sub):
    pass
def run_report(args):
    return 0
