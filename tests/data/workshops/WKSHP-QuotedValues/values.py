VALUE = '''{{ VALUE }}'''
